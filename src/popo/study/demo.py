"""`popo demo`, a preset study: warm up the embedded testbed, train POPO and GRPO from the same start with
the same rollout budget (one seed each), evaluate all three on the validation split and write its report
(results table, diagnostics, learning curve; helpers shared with `popo.study.report`). `popo compare` runs
the same kind of study over several seeds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import torch

from popo.config import Config, load_config
from popo.study.plots import plot_learning_curves
from popo.study.report import environment_line, task_line
from popo.build import build_trainer

METHODS = ("popo", "grpo")
DIAGNOSTIC_PREFIXES = ("distinct_positive_frac", "multi_distinct_frac", "weight_dev_uniform", "grad_share/",
                       "grad_cos/", "grad_cos_positive_nll")


def demo_overrides(quick: bool) -> list[str]:
    """The demo's settings on top of the defaults; `quick` is the same pipeline on a smaller budget. The demo
    chooses nothing (its settings are fixed), so its table is the test split's: `testbed:test`."""
    common = ["model.name=testbed", "data.source=testbed", "data.eval_source=testbed:test", "train.save_every=0",
              "train.overwrite=true",
              "rollout.prompts_per_step=32", "rollout.group_size=8", "optim.lr=5e-5", "train.eval_samples=4"]
    if quick:
        return common + ["testbed.digits=2", "testbed.warmup_steps=300", "train.steps=12", "train.eval_every=6",
                         "data.eval_size=200", "train.diag_every=6"]
    return common + ["train.steps=150", "train.eval_every=50", "data.eval_size=1000", "train.diag_every=10"]


def diagnostic_means(records: list[dict]) -> dict[str, float]:
    """Mean over the logged steps of each `popo.diagnostics` value (logged every train.diag_every steps)."""
    keys = {k for r in records for k in r if k.startswith(DIAGNOSTIC_PREFIXES)}
    return {k: sum(r[k] for r in records if k in r) / sum(1 for r in records if k in r) for k in sorted(keys)}


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
                     "train_s": sum(h.get("time/train", 0.0) for h in steps),
                     "diagnostics": diagnostic_means(steps)})
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


def results_table(rows: list[dict[str, Any]], k: int) -> str:
    """The demo's results table (markdown, also printed to the console): one row per method."""
    header = (f"| method | greedy acc | avg@{k} | pass@{k} | train reward | wall time (s) | "
              "trained rollouts | trained tokens |")
    lines = [header, "|" + " --- |" * 8]
    for r in rows:
        def num(key: str, fmt: str = "{:.3f}") -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['method']} | {num('greedy_acc')} | {num(f'avg@{k}')} | {num(f'pass@{k}')} | "
                     f"{num('reward_mean')} | {num('wall_s', '{:.1f}')} | {num('trained_rollouts', '{:.0f}')} | "
                     f"{num('trained_tokens', '{:.0f}')} |")
    return "\n".join(lines)


def demo_diagnostics(rows: list[dict]) -> str:
    """The demo's diagnostics table (markdown): one row per method that logged diagnostics."""
    columns = [("distinct_positive_frac", "distinct / positives"), ("multi_distinct_frac", "prompts with 2+ distinct"),
               ("weight_dev_uniform", "|w - uniform|"), ("grad_share/nll", "NLL share"),
               ("grad_share/sim", "sim share"), ("grad_share/ent", "ent share"), ("grad_share/pg", "PG share"),
               ("grad_cos/nll", "cos(full, NLL)"), ("grad_cos_positive_nll", "cos(full, positive NLL)")]
    rows = [r for r in rows if r.get("diagnostics")]
    columns = [(k, label) for k, label in columns if any(k in r["diagnostics"] for r in rows)]
    lines = ["| method | " + " | ".join(label for _, label in columns) + " |", "|" + " --- |" * (1 + len(columns))]
    for r in rows:
        d = r["diagnostics"]
        lines.append(f"| {r['method']} | " + " | ".join(f"{d[k]:.3f}" if k in d else "-" for k, _ in columns) + " |")
    return "\n".join(lines) if rows else "(no diagnostics logged: train.diag_every=0)"


def write_demo_report(out: Path, table: str, config: Config, overrides: list[str], rows: list[dict],
                      total_s: float, quick: bool) -> None:
    """The demo's report.md: task, budget, the results table, the training-time comparison and the command."""
    by = {r["method"]: r for r in rows}
    ratio = ""
    if "popo" in by and "grpo" in by and by["grpo"].get("train_s"):
        ratio = (f"POPO's training phase took {by['popo']['train_s']:.1f}s against GRPO's "
                 f"{by['grpo']['train_s']:.1f}s ({by['popo']['train_s'] / by['grpo']['train_s']:.2f}x): "
                 f"POPO forwards and back-propagates only its positive rollouts "
                 f"({by['popo']['forwarded_rollouts']:.0f} rows against GRPO's "
                 f"{by['grpo']['forwarded_rollouts']:.0f} of {by['grpo']['trained_rollouts']:.0f}: GRPO skips the "
                 f"rows whose advantage is exactly zero, those of prompts whose rollouts all got the same reward).\n")
    text = f"""# popo demo{' (quick)' if quick else ''}

Task: {task_line(config)} (reward 1 only for a
right, well-formed answer). Model: the embedded tiny Qwen2, warmed up by imitation. Both methods
start from the same warmed-up checkpoint and sample the same number of rollouts
({config.train.steps} steps x {config.rollout.prompts_per_step} prompts x {config.rollout.group_size}).
Evaluation: {config.data.eval_size} held-out problems never used in training; greedy accuracy and
avg@{config.train.eval_samples} / pass@{config.train.eval_samples} sampled at temperature {config.rollout.temperature}.

{table}

{ratio}
Did the methods' components act? Means over the steps with diagnostics (`popo.diagnostics`): the share
of distinct strings among a prompt's positives, the share of prompts whose positives differ at all (both
over prompts with two or more positives), POPO's mean |softmax weight - uniform weight| there, each loss
term's share of the gradient norm, and the cosine between the full gradient and the NLL-only one.

{demo_diagnostics(rows)}

What one seed can show: that the pipeline runs, what each method costs (rows and tokens trained, seconds),
and whether POPO's weights and similarity term had anything to act on (the diagnostics). What it cannot
show: which method is better. Differences of a few points are within noise (the standard error of a
greedy accuracy near 0.3 on {config.data.eval_size} problems is about
{(0.3 * 0.7 / max(1, config.data.eval_size)) ** 0.5:.3f}, and seeds differ by more); `popo compare` over
several seeds, with learning rates chosen on validation (`--tune`), is the tool for claims.

![learning curve](learning_curve.png)

Command: `popo demo{' --quick' if quick else ''}` (settings: `{' '.join(overrides)}`).
Total wall time {total_s:.0f}s on {environment_line()}.
"""
    (out / "report.md").write_text(text)
