"""Study reports: `popo report RUN_DIR` writes report.md of a compare/sweep study from its runs' metrics files
only (`popo.study.demo_report` writes the `popo demo` report with the same line helpers). `write_study_report` joins
one function per section: setup, results (mean +- 95% CI over seeds), paired comparisons by seed (Holm-corrected
paired t-tests, Cohen's d_z, TOST equivalence and the per-problem tables of `popo.study.outcomes`), learning
curves, training diagnostics, compute, and how to reproduce. `popo.study.plots` draws the figures.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from popo.config import Config, load_config
from popo.study.frontier_report import frontier_section
from popo.study.paired_report import paired_section
from popo.study.plots import step_seconds, study_plots
from popo.study.run_records import final_eval, load_runs, mean_start_metrics, start_evaluations
from popo.study.runs import Study, load_study
from popo.study.stats import Interval, binomial_se, mean_ci

SECTIONS = ("## Setup", "## Results", "## Paired comparisons", "## Learning curves", "## Frontier",
            "## Training diagnostics", "## Compute", "## Reproduce")


def task_line(config: Config) -> str:
    """What the run's task is, in words (the testbed task's own description, else the data source)."""
    from popo.data.prepare import is_testbed, testbed_task

    return f"testbed: {testbed_task(config).describe()}" if is_testbed(config.data.source) else config.data.source


def environment_line() -> str:
    """Versions, machine and torch threads, for the "Machine" line of both reports."""
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, {platform.machine()} with {torch.get_num_threads()} threads")


def _fmt(ci: Interval, digits: int = 3) -> str:
    if ci.half_width != ci.half_width:
        return f"{ci.mean:.{digits}f}"
    return f"{ci.mean:.{digits}f} ± {ci.half_width:.{digits}f}"


def results_rows(runs: dict[str, dict[int, list[dict]]], metrics: list[str]) -> list[tuple[str, int, list[Interval]]]:
    rows = []
    for name, by_seed in runs.items():
        finals = [final_eval(records) for records in by_seed.values()]
        rows.append((name, len(finals), [mean_ci([f[m] for f in finals if m in f] or [float("nan")])
                                         for m in metrics]))
    return rows


def forwarded(record: dict, what: str) -> float:
    """The rollouts (`what="rollouts"`) or completion tokens (`"tokens"`) of a step record that went through
    the forward and backward pass: `forwarded_*`, which the trainer records after dropping the rows whose
    credit is zero (GRPO's rows of all-equal groups, POPO's negatives). Records without it (control runs,
    which forward everything they train on) fall back to `trained_*`."""
    return float(record.get(f"forwarded_{what}", record.get(f"trained_{what}", 0)) or 0)


def compute_rows(runs: dict[str, dict[int, list[dict]]], done: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| variant | rollouts sampled / run | rollouts through forward+backward / run | "
             "completion tokens through forward+backward / run | training s / step | "
             "run wall time (s, incl. eval) |", "|" + " --- |" * 6]
    for name, by_seed in runs.items():
        def per_run(key: str) -> float:
            return sum(sum(r.get(key, 0) for r in records) for records in by_seed.values()) / len(by_seed)

        def through_backward(what: str) -> float:
            return sum(sum(forwarded(r, what) for r in records) for records in by_seed.values()) / len(by_seed)
        steps = [r for records in by_seed.values() for r in records if r.get("step", 0) > 0]
        sps = sum(step_seconds(r) for r in steps) / max(1, len(steps))
        wall = sum(d["wall_s"] for d in done[name].values()) / len(done[name])
        sampled = per_run("rollouts") + per_run("sampling/extra_rollouts")  # dynamic sampling's refills count too
        lines.append(f"| {name} | {sampled:.0f} | {through_backward('rollouts'):.0f} | "
                     f"{through_backward('tokens'):.0f} | {sps:.2f} | {wall:.0f} |")
    return lines


def below_start_warning(rows: list[tuple[str, int, list[Interval]]], start: float) -> str:
    """A warning when every variant's mean final greedy accuracy (the first metric of `rows`) is below the
    step-0 accuracy `start`, as `popo train`'s summary warns for one run; else "". It says whether the fall
    is beyond each variant's 95% CI."""
    if not rows or not all(cis and cis[0].mean < start for _, _, cis in rows):
        return ""
    name, _, cis = max(rows, key=lambda row: row[2][0].mean)
    highs = [row[2][0].mean + row[2][0].half_width for row in rows]
    if any(h != h for h in highs):
        how = "a variant has a single seed, so there is no CI to tell a real fall from noise"
    elif all(h < start for h in highs):
        how = "every variant's 95% CI lies below the start: these settings made the model worse"
    else:
        how = "some CIs reach the start, so the fall may be noise"
    return (f"**WARNING: every variant ended below the start**: greedy accuracy {start:.3f} at step 0, best final "
            f"mean {cis[0].mean:.3f} ({name}); {how} (try a lower optim.lr or more rollout.prompts_per_step).")


DIAGNOSTICS_TEXT = """## Training diagnostics

Pass rate of the sampled rollouts, token entropy of the rows each method trains on (all rollouts for
GRPO, positives only for POPO-family methods, so levels differ by construction), the implicit-negative
diagnostic (change of the mean log-probability of the step's negative rollouts caused by the update;
negative means the update pushed the failures down), the fraction of distinct strings among a prompt's
positives (prompts with two or more), and the NLL term's share of the POPO gradient norm (1 minus it is
what the similarity and entropy terms contribute; `popo.diagnostics`). Moving averages over steps, mean
over seeds.

![diagnostics](diagnostics.png)

"""
COMPUTE_TEXT = """## Compute

Per run, mean over seeds. Rollouts sampled are the budget (equal by construction, dynamic sampling's
refills included). Rollouts and completion tokens through forward+backward are the training rows that the
policy actually ran forward and back-propagated (`forwarded_rollouts` / `forwarded_tokens` in
metrics.jsonl): POPO's positives only, GRPO's rows with a non-zero advantage. Seconds are wall-clock on a machine shared with other
jobs whose load changed during the study, so they compare methods only roughly; rows and tokens do not
depend on the load.

"""


def results_table(rows: list, metrics: list[str], start_means: list[float], log: Callable[[str], None],
                  start_count: int = 1) -> list[str]:
    """The final metrics table (mean ± 95% CI over seeds) with the start's row (the mean over its `start_count`
    evaluations, counted in the seeds column), and the below-start warning."""
    start = start_means[0]
    table = ["| variant | seeds | " + " | ".join(f"{m} (mean ± 95% CI)" for m in metrics) + " |",
             "|" + " --- |" * (2 + len(metrics))]
    table.append(f"| *start (step 0)* | {start_count} | " + " | ".join(f"{v:.3f}" for v in start_means) + " |")
    table += [f"| {n} | {c} | " + " | ".join(_fmt(ci) for ci in cis) + " |" for n, c, cis in rows]
    if (below := below_start_warning(rows, start)):
        table.append("\n" + below)
        log(below)
    return table


LEARNING_CURVES_TEXT = """## Learning curves

![vs rollouts](curve_rollouts.png) ![vs wall time](curve_walltime.png)

"""


def report_metrics(config: Config) -> list[str]:
    """The final metrics the report shows: greedy accuracy, with avg@k and pass@k when k samples are drawn."""
    k = config.train.eval_samples
    return ["greedy_acc", f"avg@{k}", f"pass@{k}"] if k > 0 else ["greedy_acc"]


def same_start_line(runs: dict[str, dict[int, list[dict]]], done: dict[str, dict[int, dict]]) -> str:
    """The setup's "Same start" item: initial checkpoints, and whether all step-0 greedy accuracies agree."""
    greedy = sorted({round(r["eval/greedy_acc"], 6) for r in start_evaluations(runs)})
    initial = sorted({d["initial_checkpoint"] for by in done.values() for d in by.values()})
    same = (f"yes: every run's step-0 greedy accuracy is {greedy[0]:.3f}" if len(greedy) == 1
            else f"NO: step-0 greedy accuracies differ ({greedy})")
    return f"Same start: initial checkpoint {', '.join(f'`{shown_path(p)}`' for p in initial)}; {same}."


def setup_section(study: Study, config: Config, runs: dict[str, dict[int, list[dict]]],
                  done: dict[str, dict[int, dict]], unfinished: list[str]) -> str:
    """The "Setup" section: runs, rollout budget, task and held-out evaluation, same start, and variants."""
    k, n_eval = config.train.eval_samples, config.data.eval_size or config.testbed.test_size
    variants = "\n".join(f"- `{v.name}`: `{' '.join(v.overrides)}`" + (" (supervised control)" if v.sft else "")
                         for v in study.variants)
    return f"""## Setup

- Runs: {sum(len(s) for s in runs.values())} finished ({len(runs)} variants; seeds {', '.join(map(str, study.seeds))}),
  {len(unfinished)} unfinished{': ' + ', '.join(unfinished) if unfinished else ''}.
- Budget: every run samples {config.train.steps} steps x {config.rollout.prompts_per_step} prompts x
  {config.rollout.group_size} rollouts = **{study.budget} rollouts** (sft-more samples none: it trains on one
  reference solution per prompt for the same {config.train.steps} steps and prompts).
- Task: `{config.data.source}` ({task_line(config)}).
  Held-out evaluation: {n_eval} problems never trained on; greedy accuracy, avg@{k} and pass@{k} sampled at
  temperature {config.rollout.temperature}. A single greedy accuracy near 0.3 on {n_eval} problems has a
  binomial standard error of {binomial_se(0.3, n_eval):.3f}.
- {same_start_line(runs, done)}
- Seeds change the prompt order, the sampling and the loss noise, never the initial weights or test set.

Variants (on top of the shared settings):
{variants}

"""


def results_section(rows: list, metrics: list[str], start_means: list[float], log: Callable[[str], None],
                    start_count: int = 1) -> str:
    """The "Results" section: the final metrics table of `results_table` and the forest plot."""
    return f"""## Results

Final held-out metrics, mean ± 95% confidence interval over seeds (Student t, n − 1 degrees of freedom). The
start's row is the mean over its {start_count} step-0 evaluation(s) (each run evaluates the start under its own
seed before training; runs that sample it alike count once), the same start as in the pass@j table below:

{chr(10).join(results_table(rows, metrics, start_means, log, start_count))}

![final accuracy](final_accuracy.png)

"""


def compute_section(runs: dict[str, dict[int, list[dict]]], done: dict[str, dict[int, dict]]) -> str:
    """The "Compute" section: what its columns count, then the `compute_rows` table."""
    return COMPUTE_TEXT + "\n".join(compute_rows(runs, done)) + "\n\n"


def reproduce_section(out: Path, study: Study, done: dict[str, dict[int, dict]]) -> str:
    """The "Reproduce" section: the study's commands, its shared settings and the machine it ran on."""
    threads = sorted({d.get("threads") for by in done.values() for d in by.values()})
    total_wall = sum(d["wall_s"] for by in done.values() for d in by.values())
    return f"""## Reproduce

```
{chr(10).join(study.commands)}
popo report {out}
```

Shared settings: config file `{study.config_path or '(none: built-in study defaults)'}`, overrides
`{' '.join(study.base_overrides)}`. Each run's full configuration is in its `config.yaml`.
Machine: {environment_line()}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()});
runs used {', '.join(map(str, threads))} torch thread(s) each; sum of run wall times {total_wall:.0f}s.
"""


def write_study_report(out: str | Path, *, baselines: list[str] | None = None,
                       log: Callable[[str], None] = print) -> Path:
    """Write report.md and the figures of the study folder `out` from its finished runs' metrics; every
    variant is paired against each of `baselines` that ran (default popo and grpo)."""
    out = Path(out)
    study = load_study(out)
    config = load_config(study.config_path, study.base_overrides)
    metrics = report_metrics(config)
    runs, done, unfinished = load_runs(out, study)
    if not runs:
        raise RuntimeError(f"{out}: no finished run to report on")
    baselines = [b for b in (baselines or ["popo", "grpo"]) if b in runs]
    start_means = mean_start_metrics(runs, metrics)
    rows = results_rows(runs, metrics)
    study_plots(out, runs, done, rows, metrics, start_means)
    text = "".join([f"# Study report: {out}\n\n", setup_section(study, config, runs, done, unfinished),
                    results_section(rows, metrics, start_means, log, len(start_evaluations(runs))),
                    paired_section(out, study, runs, baselines, metrics), LEARNING_CURVES_TEXT,
                    frontier_section(out, baselines), DIAGNOSTICS_TEXT,
                    compute_section(runs, done), reproduce_section(out, study, done)])
    (out / "report.md").write_text(text)
    log(f"report: {out / 'report.md'}")
    return out / "report.md"


def summary(out: str | Path) -> dict[str, Any]:
    """Final metrics by variant and seed (for scripts and tests)."""
    out = Path(out)
    runs, _, _ = load_runs(out, load_study(out))
    return {name: {seed: final_eval(records) for seed, records in by_seed.items()} for name, by_seed in runs.items()}


def shown_path(path: str) -> str:
    """A path as a committed report shows it: relative to the current folder when inside it (a repository's
    `.cache/popo/testbed-…`), else only its last two parts, never the absolute path of the machine that wrote it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*resolved.parts[-2:]))
