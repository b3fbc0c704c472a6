"""Study reports: `popo report RUN_DIR` (report.md and PNGs of a compare/sweep study, from its runs'
metrics files only) and the `popo demo` report (its results table and report.md).

Study report sections: setup, same-start check, results (mean +- 95% CI over seeds of the final held-out
greedy accuracy, avg@k and pass@k), paired comparisons by seed against baseline methods (difference with
CI, paired t-test p-value, Cohen's d_z, and "no significant difference" when p >= 0.05), learning curves
against rollouts and training wall time, training diagnostics, compute per method, and how to reproduce.
The figures are drawn by `popo.study.plots`.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from popo.config import Config, load_config
from popo.study.plots import plot_curves, plot_forest, plot_panels
from popo.study.runs import Study, load_study
from popo.study.stats import Interval, binomial_se, mean_ci, paired_test
from popo.tracking import read_metrics

SECTIONS = ("## Setup", "## Results", "## Paired comparisons", "## Learning curves", "## Training diagnostics",
            "## Compute", "## Reproduce")


def environment_line() -> str:
    """Versions, machine and torch threads, for the "Machine" line of both reports."""
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, {platform.machine()} with {torch.get_num_threads()} threads")


def load_runs(out: Path, study: Study) -> tuple[dict[str, dict[int, list[dict]]], dict[str, dict[int, dict]],
                                                list[str]]:
    """Finished runs' metrics and done records by variant and seed, and the unfinished runs' folders."""
    runs: dict[str, dict[int, list[dict]]] = {}
    done: dict[str, dict[int, dict]] = {}
    unfinished = []
    for v in study.variants:
        for seed in study.seeds:
            run_dir = out / v.dirname / f"seed-{seed}"
            if (run_dir / "done.json").is_file():
                runs.setdefault(v.name, {})[seed] = read_metrics(run_dir / "metrics.jsonl")
                done.setdefault(v.name, {})[seed] = json.loads((run_dir / "done.json").read_text())
            elif run_dir.is_dir():
                unfinished.append(str(run_dir))
    return runs, done, unfinished


def final_eval(records: list[dict]) -> dict[str, float]:
    last = [r for r in records if "eval/greedy_acc" in r]
    return {k.removeprefix("eval/"): v for k, v in last[-1].items() if k.startswith("eval/")} if last else {}


def start_eval(records: list[dict]) -> dict[str, float]:
    first = [r for r in records if r.get("step") == 0 and "eval/greedy_acc" in r]
    return {k.removeprefix("eval/"): v for k, v in first[0].items() if k.startswith("eval/")} if first else {}


def step_seconds(record: dict) -> float:
    """Training-loop seconds of one step (sampling, verifying, updating; evaluation excluded)."""
    return sum(v for k, v in record.items() if k.startswith("time/"))


def eval_points(records: list[dict], metric: str) -> list[tuple[int, float, float]]:
    """(rollouts so far, training seconds so far, metric) at every evaluation."""
    out, seconds = [], 0.0
    for r in records:
        seconds += step_seconds(r)
        if f"eval/{metric}" in r:
            out.append((r.get("rollouts_total", 0), seconds, r[f"eval/{metric}"]))
    return out


def _fmt(ci: Interval, digits: int = 3) -> str:
    if ci.half_width != ci.half_width:
        return f"{ci.mean:.{digits}f}"
    return f"{ci.mean:.{digits}f} ± {ci.half_width:.{digits}f}"


def _signed(ci: Interval) -> str:
    if ci.half_width != ci.half_width:
        return f"{ci.mean:+.3f}"
    return f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


def results_rows(runs: dict[str, dict[int, list[dict]]], metrics: list[str]) -> list[tuple[str, int, list[Interval]]]:
    rows = []
    for name, by_seed in runs.items():
        finals = [final_eval(records) for records in by_seed.values()]
        rows.append((name, len(finals), [mean_ci([f[m] for f in finals if m in f] or [float("nan")])
                                         for m in metrics]))
    return rows


def paired_table(runs: dict[str, dict[int, list[dict]]], baseline: str, metrics: list[str]) -> list[str]:
    header = "| variant | seeds | " + " | ".join(f"Δ {m} [95% CI] | p | d_z" for m in metrics) + " | reading |"
    lines = [header, "|" + " --- |" * (3 + 3 * len(metrics))]
    base = runs[baseline]
    for name, by_seed in runs.items():
        if name == baseline:
            continue
        seeds = sorted(set(by_seed) & set(base))
        if not seeds:
            continue
        cells, readings = [], []
        for m in metrics:
            result = paired_test([final_eval(by_seed[s])[m] for s in seeds], [final_eval(base[s])[m] for s in seeds])
            p = ("-" if result.p_value != result.p_value else "<0.001" if result.p_value < 0.001
                 else f"{result.p_value:.3f}")
            dz = "-" if result.d_z != result.d_z else f"{result.d_z:+.2f}"
            cells.append(f"{_signed(result.ci)} | {p} | {dz}")
            if len(seeds) < 2:
                readings.append(f"{m}: one seed, no test")
            elif result.significant:
                readings.append(f"{m}: {'higher' if result.mean_diff > 0 else 'lower'} (p < 0.05)")
            else:
                readings.append(f"{m}: no significant difference")
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + f" | {'; '.join(readings)} |")
    return lines


def _curve(by_seed: dict[int, list[dict]], metric: str, axis: int) -> list[tuple[float, float, float]]:
    """Mean over seeds of `metric` at each evaluation, against rollouts (axis 0) or seconds (axis 1)."""
    per_seed = [eval_points(records, metric) for records in by_seed.values()]
    count = min(len(p) for p in per_seed)
    out = []
    for i in range(count):
        ci = mean_ci([p[i][2] for p in per_seed])
        out.append((sum(p[i][axis] for p in per_seed) / len(per_seed), ci.mean, ci.half_width))
    return out


def _smoothed(by_seed: dict[int, list[dict]], key: str, window: int = 10) -> list[tuple[float, float]]:
    """Mean over seeds of a training metric by step, then a trailing moving average."""
    sums: dict[int, list[float]] = {}
    for records in by_seed.values():
        for r in records:
            if key in r and isinstance(r[key], (int, float)) and r.get("step", 0) > 0:
                sums.setdefault(int(r["step"]), []).append(float(r[key]))
    steps = sorted(sums)
    means = [sum(sums[s]) / len(sums[s]) for s in steps]
    out = []
    for i, s in enumerate(steps):
        chunk = means[max(0, i - window + 1): i + 1]
        out.append((s, sum(chunk) / len(chunk)))
    return out


def compute_rows(runs: dict[str, dict[int, list[dict]]], done: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| variant | rollouts sampled / run | trained rows / run | trained tokens / run | "
             "training s / step | run wall time (s, incl. eval) |", "|" + " --- |" * 6]
    for name, by_seed in runs.items():
        def per_run(key: str) -> float:
            return sum(sum(r.get(key, 0) for r in records) for records in by_seed.values()) / len(by_seed)
        steps = [r for records in by_seed.values() for r in records if r.get("step", 0) > 0]
        sps = sum(step_seconds(r) for r in steps) / max(1, len(steps))
        wall = sum(d["wall_s"] for d in done[name].values()) / len(done[name])
        lines.append(f"| {name} | {per_run('rollouts'):.0f} | {per_run('trained_rollouts'):.0f} | "
                     f"{per_run('trained_tokens'):.0f} | {sps:.2f} | {wall:.0f} |")
    return lines


def write_study_report(out: str | Path, *, baselines: list[str] | None = None,
                       log: Callable[[str], None] = print) -> Path:
    out = Path(out)
    study = load_study(out)
    config = load_config(study.config_path, study.base_overrides)
    k = config.train.eval_samples
    metrics = ["greedy_acc", f"avg@{k}", f"pass@{k}"] if k > 0 else ["greedy_acc"]
    runs, done, unfinished = load_runs(out, study)
    if not runs:
        raise RuntimeError(f"{out}: no finished run to report on")
    baselines = [b for b in (baselines or ["popo", "grpo"]) if b in runs]
    starts = [start_eval(records) for by_seed in runs.values() for records in by_seed.values()]
    start_greedy = sorted({round(s["greedy_acc"], 6) for s in starts if s})
    start_means = [sum(s[m] for s in starts if s) / max(1, sum(1 for s in starts if s)) for m in metrics]
    start = start_means[0]
    initial = sorted({d["initial_checkpoint"] for by in done.values() for d in by.values()})
    n_eval = config.data.eval_size or config.testbed.test_size

    rows = results_rows(runs, metrics)
    main = {n: s for n, s in runs.items() if " " not in n}
    plot_forest([(n, [(ci.mean, ci.half_width) for ci in cis]) for n, _, cis in rows], metrics,
                out / "final_accuracy.png", start=start_means)
    if main:
        plot_curves({n: _curve(s, "greedy_acc", 0) for n, s in main.items()}, out / "curve_rollouts.png",
                    xlabel="rollouts sampled (sft-more: RL-equivalent budget)", ylabel="held-out greedy accuracy",
                    title="mean over seeds, shaded 95% CI", baseline=start)
        plot_curves({n: _curve(s, "greedy_acc", 1) for n, s in main.items()}, out / "curve_walltime.png",
                    xlabel="training seconds (evaluation excluded)", ylabel="held-out greedy accuracy",
                    title="mean over seeds, shaded 95% CI", baseline=start)
        rl = {n: s for n, s in main.items() if not next(iter(done[n].values())).get("sft")}
        plot_panels([("train pass rate", {n: _smoothed(s, "pass_rate") for n, s in rl.items()}),
                     ("token entropy of trained rows", {n: _smoothed(s, "entropy") for n, s in rl.items()}),
                     ("implicit-negative Δ log-prob", {n: _smoothed(s, "implicit_neg_logprob_delta", 3)
                                                       for n, s in rl.items()})],
                    out / "diagnostics.png", "step")

    table = ["| variant | seeds | " + " | ".join(f"{m} (mean ± 95% CI)" for m in metrics) + " |",
             "|" + " --- |" * (2 + len(metrics))]
    table.append("| *start (step 0)* | - | " + " | ".join(f"{v:.3f}" for v in start_means) + " |")
    table += [f"| {n} | {c} | " + " | ".join(_fmt(ci) for ci in cis) + " |" for n, c, cis in rows]
    paired = []
    for b in baselines:
        paired += [f"\nAgainst **{b}** (variant minus {b}, paired by seed):\n", *paired_table(runs, b, metrics)]
    variants = "\n".join(f"- `{v.name}`: `{' '.join(v.overrides)}`" + (" (supervised control)" if v.sft else "")
                         for v in study.variants)
    same = ("yes: every run's step-0 greedy accuracy is " + f"{start_greedy[0]:.3f}" if len(start_greedy) == 1
            else f"NO: step-0 greedy accuracies differ ({start_greedy})")
    threads = sorted({d.get("threads") for by in done.values() for d in by.values()})
    total_wall = sum(d["wall_s"] for by in done.values() for d in by.values())
    text = f"""# Study report: {out}

## Setup

- Runs: {sum(len(s) for s in runs.values())} finished ({len(runs)} variants; seeds {', '.join(map(str, study.seeds))}),
  {len(unfinished)} unfinished{': ' + ', '.join(unfinished) if unfinished else ''}.
- Budget: every run samples {config.train.steps} steps x {config.rollout.prompts_per_step} prompts x
  {config.rollout.group_size} rollouts = **{study.budget} rollouts** (sft-more samples none: it trains on one
  reference solution per prompt for the same {config.train.steps} steps and prompts).
- Task: `{config.data.source}` (testbed: {config.testbed.digits}-digit addition; warm-up on easier problems).
  Held-out evaluation: {n_eval} problems never trained on; greedy accuracy, avg@{k} and pass@{k} sampled at
  temperature {config.rollout.temperature}. A single greedy accuracy near 0.3 on {n_eval} problems has a
  binomial standard error of {binomial_se(0.3, n_eval):.3f}.
- Same start: initial checkpoint {', '.join(f'`{p}`' for p in initial)}; {same}.
- Seeds change the prompt order, the sampling and the loss noise, never the initial weights or test set.

Variants (on top of the shared settings):
{variants}

## Results

Final held-out metrics, mean ± 95% confidence interval over seeds (Student t, n − 1 degrees of freedom):

{chr(10).join(table)}

![final accuracy](final_accuracy.png)

## Paired comparisons

Same seeds, same prompts, same initial checkpoint: differences with a 95% CI, paired t-test p-value and
Cohen's d_z (mean difference / SD of the differences). With few seeds the test has little power: "no
significant difference" means the data cannot tell the methods apart, not that they are equal.
{chr(10).join(paired)}

## Learning curves

![vs rollouts](curve_rollouts.png) ![vs wall time](curve_walltime.png)

## Training diagnostics

Pass rate of the sampled rollouts, token entropy of the rows each method trains on (all rollouts for
GRPO, positives only for POPO-family methods, so levels differ by construction) and the implicit-negative
diagnostic (change of the mean log-probability of the step's negative rollouts caused by the update;
negative means the update pushed the failures down). Moving averages over steps, mean over seeds.

![diagnostics](diagnostics.png)

## Compute

Per run, mean over seeds. Rollouts sampled are the budget (equal by construction); trained rows and
tokens are what went through the backward pass. Seconds are wall-clock on a machine shared with other
jobs whose load changed during the study, so they compare methods only roughly; rows and tokens do not
depend on the load.

{chr(10).join(compute_rows(runs, done))}

## Reproduce

```
{chr(10).join(study.commands)}
popo report {out}
```

Shared settings: config file `{study.config_path or '(none: built-in study defaults)'}`, overrides
`{' '.join(study.base_overrides)}`. Each run's full configuration is in its `config.yaml`.
Machine: {environment_line()}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()});
runs used {', '.join(map(str, threads))} torch thread(s) each; sum of run wall times {total_wall:.0f}s.
"""
    (out / "report.md").write_text(text)
    log(f"report: {out / 'report.md'}")
    return out / "report.md"


def summary(out: str | Path) -> dict[str, Any]:
    """Final metrics by variant and seed (for scripts and tests)."""
    out = Path(out)
    runs, _, _ = load_runs(out, load_study(out))
    return {name: {seed: final_eval(records) for seed, records in by_seed.items()} for name, by_seed in runs.items()}


# ---------------------------------------------------------------- the demo's report (`popo demo`)
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

Task: {config.testbed.digits}-digit addition with a column-sum scratchpad (reward 1 only for an exactly
right, well-formed answer). Model: the embedded tiny Qwen2, warmed up on easier problems. Both methods
start from the same warmed-up checkpoint and sample the same number of rollouts
({config.train.steps} steps x {config.rollout.prompts_per_step} prompts x {config.rollout.group_size}).
Evaluation: {config.data.eval_size} held-out problems never used in training; greedy accuracy and
avg@{config.train.eval_samples} / pass@{config.train.eval_samples} sampled at temperature {config.rollout.temperature}.

{table}

{ratio}
One run per method and one seed: differences of a few points are within noise (the standard error of a
greedy accuracy near 0.3 on {config.data.eval_size} problems is about
{(0.3 * 0.7 / max(1, config.data.eval_size)) ** 0.5:.3f}). `popo compare` is the tool for claims.

![learning curve](learning_curve.png)

Command: `popo demo{' --quick' if quick else ''}` (settings: `{' '.join(overrides)}`).
Total wall time {total_s:.0f}s on {environment_line()}.
"""
    (out / "report.md").write_text(text)
