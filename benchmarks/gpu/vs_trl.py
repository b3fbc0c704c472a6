"""GPU check, part 4: a training step of TRL's GRPOTrainer against popo's GRPO and POPO steps, on the model of
part 1 (a random Qwen2 of Qwen2.5-0.5B's shape), with the same settings, in one call.

Each framework trains in a fresh process (its peak memory is its own) for `--steps` steps: the same testbed
prompts, G rollouts each, up to `--max-new-tokens` tokens, temperature 1, top-p 1, no top-k, KL beta 0,
token-mean loss, AdamW at `--lr`, gradient clip 1, no gradient checkpointing, weights in bf16 on CUDA (fp32
with `--cpu`) without autocast in either framework. Rewards: `common.hash_reward` of the completion (about
1/8 positive), the same function for all three, since a random model solves nothing. Step time: median
over the steps after the first.

TRL is optional: its wheels are in the bundle (`benchmarks/gpu/trl.txt`) but its `datasets` needs `pyarrow`
and `pandas`, which are too large to bundle; without them TRL's row says why it was skipped and popo's rows
still run.

    python3 benchmarks/gpu/vs_trl.py --model DIR --out OUT/vs_trl
    python3 benchmarks/gpu/vs_trl.py --model DIR --out OUT/vs_trl --cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))  # after site-packages: an installed popo wins
import common  # noqa: E402
import part_args  # noqa: E402

FRAMEWORKS = ("grpo", "popo", "trl")  # popo's first: under a time limit, TRL is the one left out


def problems(count: int) -> tuple[list[str], list[str]]:
    from popo.testbed.addition import AdditionTask

    examples = AdditionTask(digits=3, test_size=100).train_examples(count, seed=0)
    return [ex.problem for ex in examples], [ex.answer for ex in examples]


def popo_steps(args) -> dict:
    """`args.steps` steps of popo's trainer (`args.worker` = grpo or popo); per-step wall seconds."""
    import torch

    from popo.build import build_trainer
    from popo.config import load_config

    overrides = [
        f"model.name={args.model}", f"model.dtype={args.dtype}", f"model.device={args.device}",
        f"algo.name={args.worker}", "data.eval_source=", f"testbed.train_size={args.prompts * args.steps * 4}",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "algo.kl_coef=0.0", "algo.aggregation=token-mean",
        "algo.zero_if_truncated=false", f"optim.lr={args.lr}", "optim.grad_clip=1.0", f"train.steps={args.steps}",
        "train.eval_every=0", "train.diag_every=0", "train.tensorboard=false", "train.progress=false",
        f"train.out_dir={args.tmp / 'run'}",
    ]
    trainer = build_trainer(load_config(None, overrides), log=lambda line: None)
    trainer.verifier = common.hash_verifier()
    steps = []
    for step in range(args.steps):
        begin = time.perf_counter()
        record = trainer.train_step(step)
        if args.device == "cuda":
            torch.cuda.synchronize()
        steps.append({"s": time.perf_counter() - begin, "generated_tokens": record["generated_tokens"],
                      "positives": record["positive_rollouts"], "loss": record.get("loss")})
    return {"steps": steps, "params": sum(p.numel() for p in trainer.models.policy.parameters())}


def trl_steps(args) -> dict:
    """The same with TRL's GRPOTrainer; {"skipped": why} when TRL or its requirements cannot be imported."""
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as err:
        return {"skipped": f"TRL cannot be imported here: {err}"}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    prompts, answers = problems(args.prompts * args.steps * 4)
    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.begin = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            steps.append({"s": time.perf_counter() - self.begin})

    config = GRPOConfig(
        output_dir=str(args.tmp / "trl"), use_cpu=args.device == "cpu", bf16=False, fp16=False,
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, loss_type="dapo", learning_rate=args.lr, lr_scheduler_type="constant",
        max_grad_norm=1.0, max_steps=args.steps, gradient_checkpointing=False, report_to="none",
        logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    reward = lambda prompts, completions, **kw: [common.hash_reward(c) for c in completions]  # noqa: E731
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": prompts, "answer": answers}),
                          callbacks=[Clock()])
    trainer.train()
    return {"steps": steps, "params": sum(p.numel() for p in model.parameters())}


def worker(args) -> int:
    import torch

    with tempfile.TemporaryDirectory(prefix="popo-vs-trl-") as tmp:  # run folders (nothing is saved in them)
        args.tmp = Path(tmp)
        result = trl_steps(args) if args.worker == "trl" else popo_steps(args)
    if args.device == "cuda" and "steps" in result:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["peak_rss_mib"] = common.peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def launch(args, framework: str) -> dict:
    """One framework in a fresh process; its result, or {"error": ...} with the end of its output."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--model", str(args.model),
           "--out", str(args.out), *(["--cpu"] if args.cpu else []), "--steps", str(args.steps),
           "--prompts", str(args.prompts), "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens),
           "--lr", str(args.lr)]
    begin = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        return {"framework": framework, "error": f"timed out after {args.timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        return {"framework": framework, "error": f"exit {proc.returncode}: " + "\n".join(tail)}
    result = {"framework": framework, "process_s": time.perf_counter() - begin, **json.loads(lines[-1][7:])}
    if "steps" in result:
        timed = result["steps"][1:] or result["steps"]
        result["median_step_s"] = statistics.median(s["s"] for s in timed)
    return result


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# GPU check, part 4: TRL GRPOTrainer against popo's GRPO and POPO on {report['device']}", "",
             f"Command: `{report['command']}`", "",
             f"Settings: {s['steps']} steps of {s['prompts']} prompts x {s['group']} rollouts x up to "
             f"{s['max_new_tokens']} new tokens, {s['dtype']} weights, lr {s['lr']}; step time = median over the "
             "steps after the first.", ""]
    rows = []
    trl = next((r.get("median_step_s") for r in report["rows"] if r["framework"] == "trl"), None)
    for r in report["rows"]:
        if "median_step_s" not in r:
            rows.append([r["framework"], r.get("skipped") or r.get("error", "").splitlines()[-1]] + [""] * 4)
            continue
        ratio = trl / r["median_step_s"] if trl and r["framework"] != "trl" else float("nan")
        rows.append([r["framework"], r["median_step_s"], ratio, r.get("peak_allocated_gib", "n/a"),
                     r["peak_rss_mib"] / 1024, r["process_s"]])
    lines += common.table(["framework", "step s", "TRL / this", "peak alloc GiB", "peak RSS GiB", "process s"], rows)
    lines += ["", f"Overall: {'PASS' if report['ok'] else 'FAIL'} (TRL may be skipped; popo's rows must run)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = part_args.parser(__doc__, model=True)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--steps", type=int, help="steps per framework (default 4; --cpu: 2)")
    parser.add_argument("--prompts", type=int, help="prompts per step (default 8; --cpu: 2)")
    parser.add_argument("--group", type=int, help="G, rollouts per prompt (default 8; --cpu: 2)")
    parser.add_argument("--max-new-tokens", type=int, help="completion limit (default 64; --cpu: 4)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--timeout", type=int, default=150, help="seconds per framework")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    part_args.finish(parser, args, {"steps": (4, 2), "prompts": (8, 2), "group": (8, 2), "max_new_tokens": (64, 4)})
    args.device, args.dtype = ("cpu", "float32") if args.cpu else ("cuda", "bfloat16")
    if args.worker:
        return worker(args)
    import torch

    rows, report = [], {}
    for framework in args.frameworks:  # the report is rewritten after each: a time limit keeps what ran
        rows.append(launch(args, framework))
        r = rows[-1]
        print(f"{framework:5} " + (f"median step {r['median_step_s']:.3f} s" if "median_step_s" in r
                                   else r.get("skipped") or r["error"]), flush=True)
        ok = all("median_step_s" in r or (r["framework"] == "trl" and "skipped" in r) for r in rows)
        report = {"ok": ok, "command": common.command_line(), "versions": common.versions(("trl", "datasets")),
                  "device": torch.cuda.get_device_name() if not args.cpu else "CPU", "rows": rows,
                  "settings": {k: getattr(args, k) for k in ("steps", "prompts", "group", "max_new_tokens", "lr",
                                                             "dtype")}}
        common.write_result("vs_trl", report, markdown(report), args.out)
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
