"""`popo demo`, a preset study: from the shipped warm start on study v3's countdown task (the task where POPO's
weights and similarity term have distinct positives to act on, and where study v3's positive control showed
that GRPO learns), train POPO and GRPO with the same rollout budget (one seed each, each at the learning rate
study v3 chose for it on the validation split), evaluate them every 100 steps on the demo's own held-out split,
which no study reads (`RESERVED`: problems set aside from the RL-train split, never trained on), and write the
report (`popo.study.demo_report`): how far each method moved from the start, with intervals over problems
(per-problem outcomes from `metrics.jsonl`), the gap between them with its own interval, both methods'
trajectories in the (avg@16, pass@16) plane, a learning curve and diagnostics. The two methods train side by
side in two processes when two cores are free. `popo compare` runs the same kind of study over several seeds."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from popo.build import build_trainer
from popo.config import load_config
from popo.loading import resolve_model_path
from popo.study.demo_report import GAP, movement_table, results_table, write_demo_report
from popo.study.plots import plot_learning_curves, plot_tradeoff
from popo.study.report import task_line
from popo.study.demo_settings import (COUNTDOWN, EVAL_EVERY, EVAL_SOURCE, LEARNING_RATES, METHODS,  # noqa: F401
                                       QUICK_RESERVED, RESERVED, STEPS, demo_overrides, method_overrides)
from popo.study.runs import env_threads, worker_pool
from popo.study.stats import mean_ci

__all__ = ["METHODS", "LEARNING_RATES", "RESERVED", "demo_overrides", "results_table", "run_demo"]

DIAGNOSTIC_PREFIXES = ("distinct_positive_frac", "multi_distinct_frac", "weight_dev_uniform", "grad_share/",
                       "grad_cos/", "grad_cos_positive_nll")


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
    rows = [row for _, row in results]
    first = results[0][0][0]  # every method's step-0 evaluation is of the same warmed-up start, sampled alike
    start_eval = {k.removeprefix("eval/"): v for k, v in first.items() if k.startswith("eval/")}
    k = config.train.eval_samples
    rows.insert(0, {"method": "warmed-up start", **start_eval})
    table = results_table(rows, k)
    evaluated = {m: evaluations(out / m, k) for m in METHODS}
    trajectories = {m: [trajectory_point(step, scores) for step, scores in evals] for m, evals in evaluated.items()}
    plot_learning_curves(trajectories, out / "learning_curve.png", k)
    if k:
        plot_tradeoff(trajectories, out / "tradeoff.png", k)
    lifts = movement(evaluated)
    total = time.perf_counter() - started
    write_demo_report(out, table, config, overrides, rows, total, quick, workers, warmup_s, lifts, trajectories)
    (out / "results.json").write_text(json.dumps({"rows": rows, "movement": lifts, "trajectories": trajectories},
                                                 indent=1))
    log("\n" + table + "\n\n" + movement_table(lifts, k))
    log(f"\nreport: {out / 'report.md'}   total wall time {total:.0f}s")
    return rows


def evaluations(run_dir: Path, k: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Every evaluation of one demo run, in step order, from its metrics.jsonl: (step, per-problem scores):
    greedy (0/1), avg (correct samples / k) and pass (unbiased pass@k)."""
    from popo.step_log import OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY
    from popo.study.analysis import pass_at
    from popo.tracking import read_metrics

    def scores(record: dict) -> dict[str, np.ndarray]:
        out = {"greedy": np.array(record[OUTCOMES_KEY], dtype=float)}
        if k and SAMPLE_OUTCOMES_KEY in record:
            correct = np.array(record[SAMPLE_OUTCOMES_KEY], dtype=float)
            out.update(avg=correct / k, pass_=pass_at(correct, k, k))
        return out

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if OUTCOMES_KEY in r]
    return [(int(r["step"]), scores(r)) for r in records]


def trajectory_point(step: int, scores: dict[str, np.ndarray]) -> dict:
    """One evaluation as the figures and results.json hold it: ``{"step": s, metric: [mean, low, high]}``, the
    mean over problems with its 95% Student-t interval over problems."""
    point: dict = {"step": step}
    for metric, values in scores.items():
        ci = mean_ci(values.tolist())
        point[metric.rstrip("_")] = [ci.mean, ci.low, ci.high]
    return point


def movement(evaluated: dict[str, list[tuple[int, dict[str, np.ndarray]]]]) -> dict:
    """Each method's last evaluation minus the start (the first method's step-0 evaluation, which every method
    shares), and POPO minus GRPO at the end, per metric: the mean over the held-out problems with a 95% bootstrap
    interval over problems (one seed: the interval counts the split's finite size, not the seed-to-seed spread,
    which the multi-seed study measures)."""
    from popo.study.analysis import two_way_bootstrap

    start = evaluated[METHODS[0]][0][1]
    ends = {method: evals[-1][1] for method, evals in evaluated.items()}
    result: dict = {}
    pairs = [(f"{m} − start", ends[m], start) for m in METHODS] + [(GAP, ends["popo"], ends["grpo"])]
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
