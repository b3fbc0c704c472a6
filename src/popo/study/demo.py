"""`popo demo`, a preset study: from the shipped warm start on study v3's countdown task (the task where POPO's
weights and similarity term have distinct positives to act on, and where study v3's positive control showed
that GRPO learns), train POPO and GRPO with the same rollout budget (one seed each, each at the learning rate
study v3 chose for it on the validation split), evaluate them on the test split and write the report: how far
each method moved from the start, with intervals over problems (per-problem outcomes from `metrics.jsonl`),
the gap between them with its own interval, diagnostics and a learning curve (helpers shared with
`popo.study.report`). The two methods train side by side in two processes when two cores are free.
`popo compare` runs the same kind of study over several seeds."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import numpy as np
import torch

from popo.config import Config, load_config
from popo.study.plots import plot_learning_curves
from popo.study.report import environment_line, task_line
from popo.build import build_trainer
from popo.loading import resolve_model_path
from popo.study.runs import env_threads, worker_pool

METHODS = ("popo", "grpo")
# Each method's learning rate as study v3 chose it on the validation split of this task: the best mean final
# validation avg@16 over its three tuning seeds, from 5 rates (3e-6 .. 3e-4; raw curves in
# docs/results/study_v3/countdown/tuning/, tests/test_demo.py checks the rates against them). The demo itself
# chooses nothing.
LEARNING_RATES = {"popo": "1e-4", "grpo": "1e-4"}
RATES_FROM = "on this task's validation split by study v3 (best mean final avg@16 over its three tuning seeds)"
COUNTDOWN = ["testbed.task=countdown", "testbed.numbers=3", "testbed.max_number=20", "testbed.warmup_steps=800",
             "testbed.test_size=2000", "testbed.validation_size=500",
             "rollout.max_new_tokens=32"]  # study v3's task; its warm start ships with popo
STEPS = 500
"""The demo's budget: steps of 16 prompts x 8 rollouts (study v3's batch)."""
CONTROL_LIFT = 0.10
"""Study v3's positive-control bar on avg@k (docs/results/study_v3/preregistration.md); the report says who clears it."""
DIAGNOSTIC_PREFIXES = ("distinct_positive_frac", "multi_distinct_frac", "weight_dev_uniform", "grad_share/",
                       "grad_cos/", "grad_cos_positive_nll")


def demo_overrides(quick: bool) -> list[str]:
    """The demo's settings on top of the defaults (the learning rate is per method: `method_overrides`);
    `quick` is a smoke test of the same pipeline on a smaller task and budget, whose numbers mean nothing. The
    demo chooses nothing (its settings are fixed), so its table is the test split's: `testbed:test` (its first
    500 problems, 16 samples each)."""
    common = ["model.name=testbed", "data.source=testbed", "data.eval_source=testbed:test", "train.save_every=0",
              "train.overwrite=true", "rollout.group_size=8"]
    if quick:
        return common + ["testbed.task=countdown", "testbed.numbers=3", "testbed.test_size=300",
                         "testbed.validation_size=200", "testbed.warmup_steps=200", "rollout.prompts_per_step=32",
                         "rollout.max_new_tokens=24", "train.steps=12", "train.eval_every=6", "data.eval_size=200",
                         "train.diag_every=6", "train.eval_samples=4"]
    return common + COUNTDOWN + ["rollout.prompts_per_step=16", f"train.steps={STEPS}", f"train.eval_every={STEPS // 2}",
                                 "data.eval_size=500", "train.eval_samples=16", "train.diag_every=50"]


def method_overrides(method: str) -> list[str]:
    return [f"algo.name={method}", f"optim.lr={LEARNING_RATES[method]}"]


def diagnostic_means(records: list[dict]) -> dict[str, float]:
    """Mean over the logged steps of each `popo.diagnostics` value (logged every train.diag_every steps)."""
    keys = {k for r in records for k in r if k.startswith(DIAGNOSTIC_PREFIXES)}
    return {k: sum(r[k] for r in records if k in r) / sum(1 for r in records if k in r) for k in sorted(keys)}


def train_method(overrides: list[str], prefix: str = "",
                 log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Train one method from `overrides` (the demo's, the method's, the user's); returns its history and its
    row of the results table. Without `log` (in a worker process) it logs to stdout with `prefix`."""
    if log is None:
        def log(message: str) -> None:
            print("\n".join(prefix + line for line in message.splitlines()), flush=True)
    config = load_config(None, overrides)
    torch.manual_seed(config.train.seed)
    trainer = build_trainer(config, log=log)
    t0 = time.perf_counter()
    history = trainer.run()
    wall = time.perf_counter() - t0
    steps = [h for h in history if "reward_mean" in h]
    final = {k.removeprefix("eval/"): v for k, v in history[-1].items() if k.startswith("eval/")}
    row = {"method": config.algo.name, **final, "wall_s": wall, "lr": config.optim.lr,
           "reward_mean": sum(h["reward_mean"] for h in steps) / max(1, len(steps)),
           "trained_rollouts": sum(h.get("trained_rollouts", 0) for h in steps),
           "forwarded_rollouts": sum(h.get("forwarded_rollouts", 0) for h in steps),
           "trained_tokens": sum(h.get("trained_tokens", 0) for h in steps),
           "forwarded_tokens": sum(h.get("forwarded_tokens", 0) for h in steps),
           "train_s": sum(h.get("time/train", 0.0) for h in steps),
           "diagnostics": diagnostic_means(steps)}
    return history, row


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False, extra: list[str] | None = None,
             workers: int = 0, log: Callable[[str], None] = print) -> list[dict]:
    """Warm up (cached), train every method of METHODS and write the report; `workers` processes train the
    methods side by side (0: one per method while the machine has a core for each, one thread each)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base, extra = demo_overrides(quick), list(extra or [])
    overrides = base + extra
    config = load_config(None, overrides)
    log(f"== testbed: {task_line(config)} ==")
    t0 = time.perf_counter()
    resolve_model_path(config, log=log)  # the warm-up, once, before the methods start from it (cached)
    warmup_s = time.perf_counter() - t0
    workers = workers or (len(METHODS) if available_cores() >= len(METHODS) else 1)
    runs = [base + method_overrides(m) + extra + [f"train.out_dir={out / m}"] for m in METHODS]
    for method, run in zip(METHODS, runs):
        c = load_config(None, run)
        log(f"== {method}: {c.train.steps} steps x {c.rollout.prompts_per_step} prompts x {c.rollout.group_size} "
            f"rollouts, lr {c.optim.lr:g}{', side by side' if workers > 1 else ''} ==")
    if workers > 1:
        with worker_pool(workers, env_threads()) as pool:
            futures = [pool.submit(train_method, run, f"[{m}] ") for m, run in zip(METHODS, runs)]
            results = [f.result() for f in futures]
    else:
        results = [train_method(run, log=log) for run in runs]
    histories = {m: history for m, (history, _) in zip(METHODS, results)}
    rows = [row for _, row in results]
    first = histories[METHODS[0]][0]  # every method's step-0 evaluation is of the same warmed-up start
    start_eval = {k.removeprefix("eval/"): v for k, v in first.items() if k.startswith("eval/")}
    k = config.train.eval_samples
    rows.insert(0, {"method": "warmed-up start", **start_eval})
    table = results_table(rows, k)
    plot_learning_curves(histories, out / "learning_curve.png", start_eval.get("greedy_acc"))
    lifts = movement(out, k)
    total = time.perf_counter() - started
    write_demo_report(out, table, config, overrides, rows, total, quick, workers, warmup_s, lifts)
    (out / "results.json").write_text(json.dumps({"rows": rows, "movement": lifts}, indent=1))
    log("\n" + table + "\n\n" + movement_table(lifts, k))
    log(f"\nreport: {out / 'report.md'}   total wall time {total:.0f}s")
    return rows


def problem_scores(run_dir: Path, k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(start, end) per-problem scores of one demo run, from the first and last evaluation in its metrics.jsonl:
    greedy (0/1), avg (correct samples / k) and pass (unbiased pass@k)."""
    from popo.step_log import OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY
    from popo.study.analysis import pass_at
    from popo.tracking import read_metrics

    evaluated = [r for r in read_metrics(run_dir / "metrics.jsonl") if OUTCOMES_KEY in r]

    def scores(record: dict) -> dict[str, np.ndarray]:
        out = {"greedy": np.array(record[OUTCOMES_KEY], dtype=float)}
        if k and SAMPLE_OUTCOMES_KEY in record:
            correct = np.array(record[SAMPLE_OUTCOMES_KEY], dtype=float)
            out.update(avg=correct / k, pass_=pass_at(correct, k, k))
        return out

    return scores(evaluated[0]), scores(evaluated[-1])


def movement(out: Path, k: int) -> dict:
    """Each method's end minus the start, and POPO minus GRPO at the end, per metric: the mean over the test
    problems with a 95% bootstrap interval over problems (one seed: the interval counts the test set's finite
    size, not the seed-to-seed spread, which the multi-seed study measures)."""
    from popo.study.analysis import two_way_bootstrap

    ends, start = {}, None
    for method in METHODS:
        first, last = problem_scores(out / method, k)
        start, ends[method] = start or first, last
    result: dict = {}
    pairs = [(f"{m} − start", ends[m], start) for m in METHODS] + [("popo − grpo", ends["popo"], ends["grpo"])]
    for label, a, b in pairs:
        result[label] = {}
        for metric in a:
            t = two_way_bootstrap(a[metric][None, :], b[metric][None, :], resamples=4000)
            result[label][metric.rstrip("_")] = {"estimate": t.estimate, "low": t.low, "high": t.high,
                                                 "se": _paired_se(a[metric] - b[metric])}
    return result


def _paired_se(diff: np.ndarray) -> float:
    """Standard error of a mean paired difference over problems (sample sd / sqrt(n))."""
    return float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def movement_table(lifts: dict, k: int) -> str:
    names = {"greedy": "greedy acc", "avg": f"avg@{k}", "pass": f"pass@{k}"}
    metrics = [m for m in names if m in next(iter(lifts.values()))]
    lines = ["| difference | " + " | ".join(f"Δ {names[m]} [95% interval over problems]" for m in metrics) + " |",
             "|" + " --- |" * (1 + len(metrics))]
    for label, by in lifts.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{by[m]['estimate']:+.3f} [{by[m]['low']:+.3f}, {by[m]['high']:+.3f}]" for m in metrics) + " |")
    return "\n".join(lines)


def results_table(rows: list[dict[str, Any]], k: int) -> str:
    """The demo's results table (markdown, also printed to the console): one row per method."""
    header = (f"| method | greedy acc | avg@{k} | pass@{k} | train reward | wall time (s) | "
              "rollouts through forward+backward | completion tokens through forward+backward |")
    lines = [header, "|" + " --- |" * 8]
    for r in rows:
        def num(key: str, fmt: str = "{:.3f}") -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['method']} | {num('greedy_acc')} | {num(f'avg@{k}')} | {num(f'pass@{k}')} | "
                     f"{num('reward_mean')} | {num('wall_s', '{:.1f}')} | {num('forwarded_rollouts', '{:.0f}')} | "
                     f"{num('forwarded_tokens', '{:.0f}')} |")
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


def movement_reading(lifts: dict, k: int) -> str:
    """Plain sentences for the movement table: whether each method's interval clears the start, and the gap."""
    def verdict(d: dict) -> str:
        return "rose" if d["low"] > 0 else "fell" if d["high"] < 0 else "did not move beyond the noise"

    lines = []
    for method in METHODS:
        by = lifts[f"{method} − start"]
        parts = [f"{name} {verdict(by[m])} ({by[m]['estimate']:+.3f})" for m, name in
                 (("avg", f"avg@{k}"), ("greedy", "greedy accuracy"), ("pass", f"pass@{k}")) if m in by]
        lines.append(f"- {method.upper()}: " + ", ".join(parts) + ".")
    if "avg" in lifts[f"{METHODS[0]} − start"]:
        clears = [m.upper() for m in METHODS if lifts[f"{m} − start"]["avg"]["estimate"] >= CONTROL_LIFT]
        lines.append(f"- Study v3's positive-control bar (avg@{k} at least +{CONTROL_LIFT:.2f} over the start): "
                     + (f"cleared by {' and '.join(clears)}" if clears else "cleared by neither method")
                     + (f", not by {' and '.join(m.upper() for m in METHODS if m.upper() not in clears)}"
                        if clears and len(clears) < len(METHODS) else "") + " at this budget.")
    gap = lifts["popo − grpo"]
    metric = "avg" if "avg" in gap else "greedy"
    lines.append(f"- POPO − GRPO at the end: {gap[metric]['estimate']:+.3f} on {'avg@' + str(k) if metric == 'avg' else 'greedy accuracy'} "
                 f"(standard error of the gap over problems {gap[metric]['se']:.3f}; one seed, so seed-to-seed "
                 "variation, which is larger, is not in it).")
    return "\n".join(lines)


SMOKE_NOTE = ("**This is a smoke test of the pipeline** (a few steps on an easier task, with the full demo's "
              "rates): its numbers mean nothing, and the methods may end below their start. `make demo` is the "
              "demonstration.\n\n")
LIMITS_TEXT = """What one seed can show: that both methods learn on this task from this start, what each costs (rows and
tokens through the forward and backward pass, seconds), and whether POPO's weights and similarity term had
anything to act on. What it cannot show: which method is better; the gap's interval counts only the test
problems, and seeds differ by more. Study v3 (`docs/results/study_v3/`, several seeds, rates chosen on
validation, a positive control first) is the tool for that.

![learning curve](learning_curve.png)"""


def setup_paragraph(config: Config, rows: list[dict]) -> str:
    """The report's opening paragraph: task, model, shared start, budget, learning rates and evaluation."""
    k = config.train.eval_samples
    rates = ", ".join(f"{r['method']} {r['lr']:g}" for r in rows if "lr" in r)
    return f"""Task: {task_line(config)} (reward 1 only for a
right, well-formed answer). Model: the embedded tiny Qwen2, warmed up by imitation on one solution
drawn at random per example from all of a problem's solutions (shipped with popo: every machine starts
from the same weights). Both methods start from that checkpoint and sample the same number of rollouts
({config.train.steps} steps x {config.rollout.prompts_per_step} prompts x {config.rollout.group_size}), each at
the learning rate chosen for it {RATES_FROM} ({rates}).
Evaluation: the first {config.data.eval_size} problems of the test split, never used in training or in any
choice; greedy accuracy, and avg@{k} / pass@{k} from {k} samples at temperature {config.rollout.temperature}."""


def movement_section(lifts: dict | None, k: int, eval_size: int) -> str:
    """How far each method moved from the start and the gap between them: `movement_table` and its reading
    ("" without `lifts`)."""
    if not lifts:
        return ""
    return f"""How far each method moved from the start, and the gap between them (means over the
{eval_size} test problems, each method's end minus the start on the same problems; 95% percentile
bootstrap intervals over problems):

{movement_table(lifts, k)}

{movement_reading(lifts, k)}
"""


def speed_note(rows: list[dict]) -> str:
    """POPO's training time against GRPO's and the rows each forwarded ("" unless both ran and GRPO's time is
    known)."""
    by = {r["method"]: r for r in rows}
    if not ("popo" in by and "grpo" in by and by["grpo"].get("train_s")):
        return ""
    popo, grpo = by["popo"], by["grpo"]
    return (f"POPO's training phase took {popo['train_s']:.1f}s against GRPO's {grpo['train_s']:.1f}s "
            f"({popo['train_s'] / grpo['train_s']:.2f}x): POPO forwards and back-propagates only its positive "
            f"rollouts ({popo['forwarded_rollouts']:.0f} rows against GRPO's {grpo['forwarded_rollouts']:.0f} of "
            f"the {grpo['trained_rollouts']:.0f} in its batches: GRPO skips the rows whose advantage is exactly "
            "zero, those of prompts whose rollouts all got the same reward).\n")


def diagnostics_section(rows: list[dict]) -> str:
    """What the diagnostics measure, then the `demo_diagnostics` table."""
    return f"""Did the methods' components act? Means over the steps with diagnostics (`popo.diagnostics`): the share
of distinct strings among a prompt's positives, the share of prompts whose positives differ at all (both
over prompts with two or more positives), POPO's mean |softmax weight - uniform weight| there, each loss
term's share of the gradient norm, and the cosine between the full gradient and the NLL-only one.

{demo_diagnostics(rows)}"""


def command_paragraph(overrides: list[str], total_s: float, quick: bool, workers: int, warmup_s: float) -> str:
    """The command that made the report, its wall time (the warm-up's part and where the warm start came
    from), how the methods shared the machine, and the machine."""
    warm_start = ("the shipped warm start, or the cached copy" if warmup_s < 20 else
                  "built here: this configuration has no shipped warm start; later runs reuse the cached model")
    trained = f"side by side in {workers} processes" if workers > 1 else "one after the other"
    return f"""Command: `popo demo{' --quick' if quick else ''}` (settings: `{' '.join(overrides)}`, then per method
`algo.name` and `optim.lr`). Total wall time {total_s:.0f}s, of which {warmup_s:.0f}s to get the warmed-up
model ({warm_start});
the methods trained {trained},
on {environment_line()}."""


def write_demo_report(out: Path, table: str, config: Config, overrides: list[str], rows: list[dict],
                      total_s: float, quick: bool, workers: int = 1, warmup_s: float = 0.0,
                      lifts: dict | None = None) -> None:
    """The demo's report.md: task, budget, the results table, how far each method moved, the training-time
    comparison, the diagnostics and the command."""
    text = f"""# popo demo{' (quick)' if quick else ''}

{SMOKE_NOTE if quick else ''}{setup_paragraph(config, rows)}

{table}

{movement_section(lifts, config.train.eval_samples, config.data.eval_size)}
{speed_note(rows)}
{diagnostics_section(rows)}

{LIMITS_TEXT}

{command_paragraph(overrides, total_s, quick, workers, warmup_s)}
"""
    (out / "report.md").write_text(text)
