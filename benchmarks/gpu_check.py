"""GPU check (issue 4): a few steps of POPO and of GRPO on a randomly initialised Qwen2 of 0.5 B parameters
(Qwen2.5-0.5B's shape), FSDP2 through `accelerate launch` on one process, bf16 mixed precision (fp32 master
weights). Reports tokens/s, peak GPU memory, an MFU estimate, and whether every loss is finite.

On the device, from the repository root, with a CUDA build of torch (the machine's own `python3`: the
CPU-only .venv of `make setup` cannot use the GPU; `src/` is put on sys.path by this script):

    OMP_NUM_THREADS=4 PYTHONPATH=src python3 benchmarks/gpu_check.py --out $OUT

On CPU, as a check of the script itself (tiny model, gloo, no mixed precision; about a minute):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py --tiny --out /tmp/gpucheck

It is part 1 of `benchmarks/gpu/run.py` (the whole GPU check, installed from the wheel folder), which builds
the model once (`--model-dir DIR --build-only`) and hands the folder to every part (`--model-dir DIR`).
An installed popo is imported before the one in `src/`.

Writes gpu_check.json, gpu_check.md and one launch log per algorithm under --out; exits 1 when a launch
fails, FSDP did not engage, or a loss or gradient norm is not finite. Nothing is downloaded: the tokenizer
is the testbed's, padded with filler characters to the model's vocabulary (random completions decode to
varied text); rewards are a hash of the text (`coin_verifier`), so GRPO's advantages are mostly non-zero;
`algo.reward_threshold=-1` makes every rollout a positive, so POPO trains on the whole batch. The script
launches itself (`--inner ALGO`), which runs popo's trainer (`popo.build.build_trainer`) in process to read the CUDA peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))  # after site-packages: an installed popo wins
import common  # noqa: E402

PEAK_BF16_DENSE = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s,
# datasheets (SXM unless named); the first name found in torch.cuda.get_device_name() is used
SHAPES = {  # Qwen2Config fields: Qwen2.5-0.5B's dims, and a tiny one for CPU
    "0.5b": dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768, rms_norm_eps=1e-6),
    "tiny": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=256, max_position_embeddings=512),
}


def build_model(folder: Path, shape: dict, dtype: str) -> None:
    """Save a random Qwen2ForCausalLM of `shape` and a character tokenizer of its vocabulary size."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from popo.testbed.tokenizer import CHARACTERS, SPECIAL_TOKENS, build_tokenizer

    extra = shape["vocab_size"] - len(SPECIAL_TOKENS) - len(CHARACTERS)
    filler = [c for c in range(0x100, 0x100 + extra + 0x800) if not 0xD800 <= c <= 0xDFFF][:extra]  # no surrogates
    tokenizer = build_tokenizer(CHARACTERS + "".join(map(chr, filler)))
    config = Qwen2Config(**shape, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def coin_verifier():
    """Reward 1 for about half of all texts (`common.hash_reward` modulo 2): most groups of the random
    model then have unequal rewards, so GRPO forwards most rows (it drops groups whose rewards all tie)."""
    return common.hash_verifier(modulus=2)


def summarize_steps(history: list[dict], params: int, peak_flops: float | None) -> dict:
    """Throughput over the steps after the first (warm-up), or over the only step."""
    timed = history[1:] if len(history) > 1 else history
    # forwarded_tokens, not trained_tokens: GRPO does not forward the groups whose rewards all tie
    total = lambda key: sum(float(r.get(key, 0.0)) for r in timed)  # noqa: E731
    step_s = sum(v for r in timed for k, v in r.items() if k.startswith("time/"))
    train_flops = 6.0 * params * total("forwarded_tokens")
    return {
        "timed_steps": len(timed), "step_s_mean": step_s / len(timed),
        "forwarded_fraction": total("forwarded_rollouts") / max(total("trained_rollouts"), 1),
        "generate_tokens_per_s": total("generated_tokens") / max(total("time/generate"), 1e-9),
        "train_tokens_per_s": total("forwarded_tokens") / max(total("time/train"), 1e-9),
        "end_to_end_tokens_per_s": total("generated_tokens") / max(step_s, 1e-9),
        "train_tflops_per_s": train_flops / max(total("time/train"), 1e-9) / 1e12,
        "mfu_train": train_flops / max(total("time/train"), 1e-9) / peak_flops if peak_flops else None,
        "losses": [r.get("loss") for r in history], "grad_norms": [r.get("grad_norm") for r in history],
        "finite": all(r.get("skipped") == 0.0 and all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
                                                      for k in ("loss", "grad_norm")) for r in history),
    }


def inner(args) -> int:
    """One algorithm's run, inside `accelerate launch`; writes its result JSON to args.result."""
    import torch

    from popo import fsdp
    from popo.config import load_config
    from popo.build import build_trainer

    cuda = args.device.startswith("cuda")
    overrides = [
        f"model.name={args.model}", "model.dtype=float32", f"model.device={args.device}", f"algo.name={args.inner}",
        "data.source=testbed", "data.eval_source=", f"testbed.train_size={args.prompts * args.steps}",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "algo.reward_threshold=-1", "algo.zero_if_truncated=false",
        f"train.steps={args.steps}", "train.eval_every=0", "train.diag_every=0", "train.save_every=0",
        "train.tensorboard=false", "train.progress=false", f"train.out_dir={args.run_dir}",
    ]
    start = time.perf_counter()
    trainer = build_trainer(load_config(None, overrides))
    trainer.verifier = coin_verifier()
    setup_s = time.perf_counter() - start
    saves, save = [], trainer.save

    def timed_save():  # the run's final checkpoint: full tensors gathered from the shards
        begin, path = time.perf_counter(), save()
        saves.append(time.perf_counter() - begin)
        return path
    trainer.save = timed_save
    policy = trainer.models.policy
    sharded = fsdp.is_sharded(policy) and trainer.models.sharding is not None
    params = sum(p.numel() for p in policy.parameters())  # global sizes (DTensor.numel); tied head once
    memory = {}
    if cuda:
        torch.cuda.synchronize()
        memory = {"after_setup_allocated_gib": torch.cuda.memory_allocated() / 2**30,
                  "setup_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
        torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    history = trainer.run()
    run_s = time.perf_counter() - begin
    if cuda:
        torch.cuda.synchronize()
        memory.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                      peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
    device = torch.cuda.get_device_name() if cuda else common.machine()["processor"]
    peak = next((v for k, v in PEAK_BF16_DENSE.items() if k in device), None) if cuda and args.bf16 else None
    local = fsdp.local_tensors([next(policy.parameters())])[0]
    result = {
        "algo": args.inner, "device": device, "params": params, "fsdp": sharded,
        "master_dtype": str(local.dtype), "compute_dtype": str(trainer.models.sharding.param_dtype if sharded else None),
        "setup_s": setup_s, "run_s": run_s, "checkpoint_s": saves[-1] if saves else None,
        "peak_rss_mib": common.peak_rss_mb(), "peak_flops_assumed": peak, **memory,
        **summarize_steps(history, params, peak), "history": history,
    }
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    return 0


def launch(algo: str, args, model: Path, work: Path, out: Path) -> dict:
    """`accelerate launch` (FSDP2, one process) of this script's inner mode for `algo`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = work / f"{algo}.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version=2",
           "--fsdp_auto_wrap_policy=TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap=Qwen2DecoderLayer",
           "--fsdp_reshard_after_forward=true", "--num_processes=1", "--num_machines=1",
           f"--mixed_precision={'bf16' if args.bf16 else 'no'}", "--dynamo_backend=no",
           f"--main_process_port={port}", __file__, "--inner", algo, "--model", str(model),
           "--result", str(result), "--run-dir", str(work / f"run-{algo}"), "--device", args.device,
           *(f"--{k}={getattr(args, k.replace('-', '_'))}" for k in ("steps", "prompts", "group", "max-new-tokens"))]
    log, begin = out / f"{algo}.log", time.perf_counter()
    with log.open("w") as handle:
        handle.write(" ".join(cmd) + "\n")
        handle.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}  # never wait on a network
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:  # the launcher and the process it started: nothing keeps the GPU
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = 124
    wall = time.perf_counter() - begin
    if not args.keep:  # the final checkpoint of the 0.5 B run is about 8 GB
        shutil.rmtree(work / f"run-{algo}", ignore_errors=True)
    if code or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"{algo}: launch failed with status {code}; last lines of {log}:\n" + "\n".join(tail))
        return {"algo": algo, "failed": True, "returncode": code, "launch_s": wall}
    return {**json.loads(result.read_text()), "launch_s": wall, "returncode": 0}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# GPU check: POPO and GRPO, FSDP2 on one process ({s['shape']} random Qwen2)", "",
             f"Command (from the repository root): `{report['command']}`", "",
             f"Device: {report['device']}. Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
             "",
             f"Settings: {s['steps']} steps of {s['prompts']} prompts x {s['group']} rollouts x {s['max_new_tokens']} "
             f"new tokens; mixed precision {s['mixed_precision']}; model build "
             + ("done beforehand (--model-dir). " if report["build_s"] is None else f"{report['build_s']:.1f} s. ")
             + "Throughput over the steps after the first (warm-up).", ""]
    columns = ["algo", "params (M)", "FSDP", "finite", "gen tok/s", "train tok/s", "end-to-end tok/s",
               "step s", "MFU train", "peak alloc GiB", "peak reserved GiB", "peak RSS GiB", "checkpoint s",
               "launch s"]
    rows = []
    for r in report["runs"]:
        if r.get("failed"):
            rows.append([r["algo"], "launch failed", f"status {r['returncode']}"] + [""] * (len(columns) - 3))
            continue
        mfu = f"{100 * r['mfu_train']:.1f}%" if r.get("mfu_train") is not None else "n/a"
        rows.append([r["algo"], r["params"] / 1e6, "yes" if r["fsdp"] else "NO", "yes" if r["finite"] else "NO",
                     r["generate_tokens_per_s"], r["train_tokens_per_s"], r["end_to_end_tokens_per_s"],
                     r["step_s_mean"], mfu, r.get("peak_allocated_gib", "n/a"), r.get("peak_reserved_gib", "n/a"),
                     r["peak_rss_mib"] / 1024, r["checkpoint_s"], r["launch_s"]])
    rounded = lambda xs: [None if x is None else float(f"{x:.4g}") for x in xs]  # noqa: E731
    lines += common.table(columns, rows) + [""] + [
        f"- {r['algo']}: losses {rounded(r['losses'])}, grad norms {rounded(r['grad_norms'])}"
        for r in report["runs"] if not r.get("failed")]
    peak = next((r["peak_flops_assumed"] for r in report["runs"] if r.get("peak_flops_assumed")), None)
    lines += ["", "MFU = 6 x parameters x forwarded completion tokens / train time / peak"
              + (f" ({peak / 1e12:.0f} TFLOP/s dense bf16 assumed)" if peak else " (no peak known for this device)")
              + ": the policy's forward and backward only (not attention, prompt tokens, POPO's target forward). "
              "Peak memory: `torch.cuda.max_memory_allocated` over the steps and the final checkpoint; RSS: host "
              "memory of the training process. finite: every step updated with a finite loss and gradient norm. "
              "GRPO's loss is ~0 by construction (one update per batch: ratio 1, advantages centred per group).", "",
              f"Overall: {'PASS' if report['ok'] else 'FAIL'}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json / .md and the launch logs")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (checks the script, not the GPU)")
    parser.add_argument("--algos", default="popo,grpo")
    parser.add_argument("--steps", type=int, help="training steps (default 4; tiny: 3)")
    parser.add_argument("--prompts", type=int, help="prompts per step (default 8; tiny: 4)")
    parser.add_argument("--group", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--max-new-tokens", type=int, help="completion length limit (default 128; tiny: 16)")
    parser.add_argument("--precision", choices=("bf16", "no"), help="mixed precision (default bf16; tiny: no)")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per launch")
    parser.add_argument("--keep", action="store_true", help="keep the temporary model and run folders")
    parser.add_argument("--model-dir", type=Path, help="use this model folder, building it there if it is empty")
    parser.add_argument("--build-only", action="store_true", help="with --model-dir: build the model and stop")
    parser.add_argument("--inner", help=argparse.SUPPRESS)  # the launched mode: algorithm name
    for name in ("--model", "--result", "--run-dir", "--device"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {"steps": (4, 3), "prompts": (8, 4), "max_new_tokens": (128, 16), "precision": ("bf16", "no")}
    for key, (full, tiny) in defaults.items():
        setattr(args, key, getattr(args, key) or (tiny if args.tiny else full))
    args.bf16 = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "bf16" if args.inner else args.precision == "bf16"
    if args.inner:
        return inner(args)
    if args.out is None and not args.build_only:
        parser.error("--out is required")
    if args.build_only and args.model_dir is None:
        parser.error("--build-only needs --model-dir")
    shape = "tiny" if args.tiny else "0.5b"
    if args.model_dir is not None and not (args.model_dir / "config.json").is_file():
        begin = time.perf_counter()
        build_model(args.model_dir, SHAPES[shape], "float32" if args.tiny else "bfloat16")
        print(f"built the {shape} model in {args.model_dir} ({time.perf_counter() - begin:.1f} s)")
    if args.build_only:
        return 0
    args.device = "cpu" if args.tiny else "cuda"
    import torch
    if not args.tiny and not torch.cuda.is_available():
        parser.error(f"no CUDA device for torch {torch.__version__} ({sys.executable}); use --tiny on CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="popo-gpu-check-"))
    try:
        begin, model = time.perf_counter(), args.model_dir or work / "model"
        if args.model_dir is None:
            build_model(model, SHAPES[shape], "float32" if args.tiny else "bfloat16")
        build_s = None if args.model_dir else time.perf_counter() - begin
        runs = [launch(algo, args, model, work, args.out) for algo in args.algos.split(",")]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(not r.get("failed") and r["finite"] and r["fsdp"] for r in runs)
    device = next((r["device"] for r in runs if "device" in r), "unknown")
    report = {"ok": ok, "command": common.command_line(), "device": device, "versions": common.versions(),
              "build_s": build_s, "runs": runs,
              "settings": {"shape": shape, **SHAPES[shape], "steps": args.steps, "prompts": args.prompts,
                           "group": args.group, "max_new_tokens": args.max_new_tokens,
                           "mixed_precision": "bf16" if args.bf16 else "no"}}
    text = markdown(report)
    common.write_result("gpu_check", report, text, args.out / "gpu_check")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
