"""`popo demo`, a preset study: warm up the embedded testbed, train POPO and GRPO from the same start with
the same rollout budget (one seed each), evaluate all three on the held-out split and write a report
(through `popo.study.report`). `popo compare` runs the same kind of study over several seeds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from popo.config import load_config
from popo.study.plots import plot_learning_curves
from popo.study.report import results_table, write_demo_report
from popo.build import build_trainer

METHODS = ("popo", "grpo")


def demo_overrides(quick: bool) -> list[str]:
    """The demo's settings on top of the defaults; `quick` is the same pipeline on a smaller budget."""
    common = ["model.name=testbed", "data.source=testbed", "data.eval_source=testbed", "train.save_every=0",
              "rollout.prompts_per_step=32", "rollout.group_size=8", "optim.lr=5e-5", "train.eval_samples=4"]
    if quick:
        return common + ["testbed.digits=2", "testbed.warmup_steps=300", "train.steps=12", "train.eval_every=6",
                         "data.eval_size=200", "train.diag_every=6"]
    return common + ["train.steps=150", "train.eval_every=50", "data.eval_size=1000", "train.diag_every=10"]


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, extra: list[str] | None = None,
             log: Callable[[str], None] = print) -> list[dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    overrides = demo_overrides(quick) + list(extra or [])
    histories, rows = {}, []
    start_eval: dict[str, float] = {}
    for method in METHODS:
        config = load_config(None, overrides + [f"algo.name={method}", f"train.out_dir={out / method}"])
        log(f"\n== {method}: {config.train.steps} steps x {config.rollout.prompts_per_step} prompts x "
            f"{config.rollout.group_size} rollouts ==")
        torch.manual_seed(config.train.seed)
        trainer = build_trainer(config, log=log)
        if not start_eval:
            start_eval = {k.removeprefix("eval/"): v for k, v in trainer.evaluate().items()}
        t0 = time.perf_counter()
        history = trainer.run()
        wall = time.perf_counter() - t0
        histories[method] = history
        steps = [h for h in history if "reward_mean" in h]
        final = {k.removeprefix("eval/"): v for k, v in history[-1].items() if k.startswith("eval/")}
        rows.append({"method": method, **final, "wall_s": wall,
                     "reward_mean": sum(h["reward_mean"] for h in steps) / max(1, len(steps)),
                     "trained_rollouts": sum(h.get("trained_rollouts", 0) for h in steps),
                     "forwarded_rollouts": sum(h.get("forwarded_rollouts", 0) for h in steps),
                     "trained_tokens": sum(h.get("trained_tokens", 0) for h in steps),
                     "train_s": sum(h.get("time/train", 0.0) for h in steps)})
    k = config.train.eval_samples
    rows.insert(0, {"method": "warmed-up start", **start_eval})
    table = results_table(rows, k)
    plot_learning_curves(histories, out / "learning_curve.png", start_eval.get("greedy_acc"))
    total = time.perf_counter() - started
    write_demo_report(out, table, config, overrides, rows, total, quick)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    log("\n" + table)
    log(f"\nreport: {out / 'report.md'}   total wall time {total:.0f}s")
    return rows
