"""GPU check, part 3: the same POPO run on the testbed in fp32, once on CUDA and once on CPU.

popo's sampling and POPO's target noise are pure functions of per-row seeds (`popo.seeds`,
`popo.rollout.sampling`), so the two runs draw the same rollouts as long as the two devices' logits rank every sampled token alike. Checked,
step by step: every rollout's reward is equal, and the loss agrees within `--loss-rtol` relative to
max(1, |loss|) (default 1e-3: fp32 kernels differ in the last bits and 20 AdamW steps carry that on; a
changed rollout or a wrong kernel moves the loss by far more). Also reported: the largest difference of
gradient norms and of the final weights.

The testbed is the one-digit variant (`TESTBED`), warmed up for `--warmup-steps` (on CPU, once, shared by
both runs): the default three-digit testbed needs its full warm-up (minutes of CPU) before a rollout is
correct, and without positives POPO has no loss to compare. In `--cpu` mode both runs are on CPU with
fewer, smaller steps: a check of the script, not of CUDA.

    python3 benchmarks/gpu/parity.py --out OUT/parity
    python3 benchmarks/gpu/parity.py --out OUT/parity --cpu
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))  # after site-packages: an installed popo wins
import common  # noqa: E402
import part_args  # noqa: E402

TESTBED = ["testbed.digits=1", "testbed.test_size=6", "testbed.validation_size=0", "testbed.train_size=64",
           "testbed.warmup_batch=32"]


def overrides(args, work: Path) -> list[str]:
    return [
        "model.name=testbed", f"testbed.cache_dir={work / 'testbed'}", f"testbed.warmup_steps={args.warmup_steps}",
        *TESTBED, "model.dtype=float32", "algo.name=popo", "data.eval_source=",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"train.steps={args.steps}", "train.eval_every=0",
        "train.diag_every=0", "train.save_every=0", "train.tensorboard=false", "train.progress=false",
    ]


def one_run(args, work: Path, device: str, index: int) -> dict:
    """Train on `device`; returns per-step records, per-step rewards of every rollout and the final weights."""
    from popo.build import build_trainer
    from popo.config import load_config

    run_dir = work / f"run-{index}"
    config = load_config(None, overrides(args, work) + [f"model.device={device}", f"train.out_dir={run_dir}"])
    trainer = build_trainer(config, log=lambda line: None)
    rewards: list[list[float]] = []
    verify = trainer.verify

    def recording_verify(rollouts, indices):
        out = verify(rollouts, indices)
        rewards.append(out.tolist())
        return out

    trainer.verify = recording_verify
    trainer.save = lambda: None  # no checkpoint: only the numbers are compared
    begin = time.perf_counter()
    history = trainer.run()
    wall = time.perf_counter() - begin
    weights = {name: p.detach().float().cpu() for name, p in trainer.models.policy.named_parameters()}
    return {"device": device, "history": history, "rewards": rewards, "weights": weights, "wall_s": wall}


def close(a, b, rtol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(1.0, abs(a))


def compare(first: dict, second: dict, rtol: float) -> dict:
    """Per-step agreement of rewards and losses, and the largest weight difference after the last step."""
    steps = []
    for k, (ra, rb) in enumerate(zip(first["history"], second["history"])):
        la, lb = ra.get("loss"), rb.get("loss")
        ga, gb = ra.get("grad_norm"), rb.get("grad_norm")
        steps.append({
            "step": k + 1, "positives": ra.get("positive_rollouts"),
            "rewards_equal": first["rewards"][k] == second["rewards"][k],
            "rollouts_differing": sum(x != y for x, y in zip(first["rewards"][k], second["rewards"][k])),
            "loss": [la, lb], "loss_abs_diff": None if la is None or lb is None else abs(la - lb),
            "loss_close": close(la, lb, rtol),
            "grad_norm_abs_diff": None if ga is None or gb is None else abs(ga - gb)})
    import torch

    weight_diff = max(float((first["weights"][n] - second["weights"][n]).abs().max()) for n in first["weights"])
    diverged = [s["step"] for s in steps if not s["rewards_equal"]]
    return {"steps": steps, "rewards_equal": not diverged and len(steps) == len(first["rewards"]),
            "first_reward_divergence": diverged[0] if diverged else None,
            "losses_close": all(s["loss_close"] for s in steps),
            "steps_with_loss": sum(s["loss"][0] is not None for s in steps),
            "max_loss_abs_diff": max((s["loss_abs_diff"] for s in steps if s["loss_abs_diff"] is not None), default=None),
            "max_grad_norm_abs_diff": max((s["grad_norm_abs_diff"] for s in steps
                                           if s["grad_norm_abs_diff"] is not None), default=None),
            "max_weight_abs_diff": weight_diff, "torch": torch.__version__}


def markdown(report: dict) -> str:
    c, s = report["comparison"], report["settings"]
    lines = [f"# GPU check, part 3: POPO on the testbed, {report['devices'][0]} against {report['devices'][1]} (fp32)",
             "", f"Command: `{report['command']}`", "",
             f"Settings: {s['steps']} steps of {s['prompts']} prompts x {s['group']} rollouts x {s['max_new_tokens']} "
             f"new tokens, testbed warmed up for {s['warmup_steps']} steps ({report['warmup_s']:.0f} s); wall "
             f"{report['wall_s'][0]:.1f} s and {report['wall_s'][1]:.1f} s.", "",
             f"- rewards of every rollout equal at every step: **{'yes' if c['rewards_equal'] else 'NO'}**"
             + ("" if c["rewards_equal"] else f" (first difference at step {c['first_reward_divergence']})"),
             f"- losses within rtol {s['loss_rtol']:g} (relative to max(1, |loss|)) at every step: "
             f"**{'yes' if c['losses_close'] else 'NO'}**; largest difference {c['max_loss_abs_diff']}; "
             f"{c['steps_with_loss']} of {s['steps']} steps had a loss",
             f"- largest gradient-norm difference {c['max_grad_norm_abs_diff']}; largest final weight difference "
             f"{c['max_weight_abs_diff']:.3g}", ""]
    rows = [[st["step"], st["positives"], "yes" if st["rewards_equal"] else f"NO ({st['rollouts_differing']})",
             *(float("nan") if x is None else x for x in st["loss"]),
             float("nan") if st["loss_abs_diff"] is None else st["loss_abs_diff"]] for st in c["steps"]]
    lines += common.table(["step", "positives", "rewards equal", f"loss {report['devices'][0]}",
                           f"loss {report['devices'][1]}", "abs diff"], rows)
    lines += ["", f"Overall: {'PASS' if report['ok'] else 'FAIL'}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = part_args.parser(__doc__, model=False)
    parser.add_argument("--steps", type=int, help="training steps (default 20; --cpu: 3)")
    parser.add_argument("--warmup-steps", type=int, default=100, help="testbed warm-up steps")
    parser.add_argument("--prompts", type=int, help="prompts per step (default 16; --cpu: 4)")
    parser.add_argument("--group", type=int, help="rollouts per prompt (default 8; --cpu: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="completion limit")
    parser.add_argument("--loss-rtol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    part_args.finish(parser, args, {"steps": (20, 3), "prompts": (16, 4), "group": (8, 4)})
    import torch

    devices = ("cpu", "cpu") if args.cpu else ("cuda", "cpu")
    work = Path(tempfile.mkdtemp(prefix="popo-parity-"))
    try:
        from popo.loading import resolve_model_path
        from popo.config import load_config

        begin = time.perf_counter()
        resolve_model_path(load_config(None, overrides(args, work)), log=lambda line: None)  # the warm-up
        warmup_s = time.perf_counter() - begin
        runs = [one_run(args, work, device, i) for i, device in enumerate(devices)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    comparison = compare(runs[0], runs[1], args.loss_rtol)
    ok = comparison["rewards_equal"] and comparison["losses_close"] and comparison["steps_with_loss"] > 0
    report = {"ok": ok, "command": common.command_line(), "versions": common.versions(),
              "devices": [torch.cuda.get_device_name() if d == "cuda" else "CPU" for d in devices],
              "warmup_s": warmup_s, "wall_s": [r["wall_s"] for r in runs], "comparison": comparison,
              "settings": {k: getattr(args, k) for k in ("steps", "warmup_steps", "prompts", "group",
                                                          "max_new_tokens", "loss_rtol")},
              "histories": [r["history"] for r in runs]}
    common.write_result("parity", report, markdown(report), args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
