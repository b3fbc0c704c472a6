"""Per-problem outcomes of a study's runs, and the tables read from them.

After a run finishes, its final policy is evaluated once more on the run's held-out split with the run's
protocol, and what each problem got is kept (``problems.json`` in the run folder): the greedy answer's
correctness, how many of the k samples were correct and how many *distinct* correct samples there were.
The first run of a study does the same for the initial checkpoint (``start-problems.json`` in the study
folder; every run starts from that checkpoint), sampled as the study's smallest seed samples, so the start does
not depend on which run gets there first. From these the report computes

- a problem-level bootstrap interval of each paired difference (seeds and problems resampled together,
  `popo.study.stats.bootstrap_difference`), which counts the test set's finite size as well as the seeds;
- unbiased pass@j for j = 1, 2, 4, ... up to k, at the start and at the end (does training narrow what
  the policy can still find with many samples?);
- distinct correct solutions per solved problem, at the start and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from popo.sampling_metrics import pass_at_k
from popo.study.stats import bootstrap_difference, mean_ci

PROBLEMS, START_PROBLEMS = "problems.json", "start-problems.json"
START_NOTE = ("The start's pass@j is the mean over its step-0 evaluations (its seeds column counts them), the\n"
              "start of the Results table; its distinct count is from one of them (`start-problems.json`).\n")


def evaluate_outcomes(trainer, seed: int | None = None) -> dict:
    """Per-problem outcomes of `trainer`'s current policy on its held-out split: the run's protocol, sampled as
    the run of seed `seed` would sample it when given (a study's start, whichever run evaluates it)."""
    from popo.evaluate import evaluate
    from popo.rewards.make import make_verifier
    from popo.seeds import eval_seed

    protocol = trainer.evaluation_protocol()
    if seed is not None:
        protocol = dataclasses.replace(protocol, seed=eval_seed(seed))
    verifier = make_verifier(trainer.config, log=lambda message: None)
    try:
        with trainer.models.gathered():
            result = evaluate(trainer.engine, trainer.eval_set.prompts, trainer.eval_set.examples, verifier, protocol)
    finally:
        verifier.close()
    return outcomes_from_result(result, trainer.eval_set.examples, protocol.k)


def outcomes_from_result(result, examples, k: int) -> dict:
    """The per-problem outcomes of an `EvalResult` of `examples` with `k` samples each: ids, greedy
    correctness, correct samples and distinct correct samples (by completion text) per problem."""
    correct = result.correct.tolist()
    distinct = [len({t for t, ok in zip(result.sample_texts[i * k:(i + 1) * k], row) if ok}) for i, row in
                enumerate(correct)]
    return {"ids": [ex.id for ex in examples], "k": k,
            "greedy": [float(x) for x in result.greedy_correct.tolist()],
            "correct": [int(sum(row)) for row in correct], "distinct_correct": distinct}


def write_outcomes(trainer, path: Path, seed: int | None = None) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two runs may write a study's start at once
    tmp.write_text(json.dumps(evaluate_outcomes(trainer, seed)))
    tmp.replace(path)


def load_outcomes(study_dir: Path, run_dirs: dict[str, dict[int, Path]]) -> tuple[dict | None, dict]:
    """(start outcomes or None, {variant: {seed: outcomes}}) for the runs that have them."""
    start_path = study_dir / START_PROBLEMS
    start = json.loads(start_path.read_text()) if start_path.is_file() else None
    runs: dict[str, dict[int, dict]] = {}
    for name, by_seed in run_dirs.items():
        for seed, run_dir in by_seed.items():
            if (run_dir / PROBLEMS).is_file():
                runs.setdefault(name, {})[seed] = json.loads((run_dir / PROBLEMS).read_text())
    return start, runs


def pass_curve(outcome: dict) -> dict[int, float]:
    """Unbiased pass@j (mean over problems) for j = 1, 2, 4, ... up to k."""
    k, out, j = outcome["k"], {}, 1
    while k and j <= k:
        out[j] = sum(pass_at_k(k, c, j) for c in outcome["correct"]) / len(outcome["correct"])
        j *= 2
    return out


def distinct_per_solved(outcomes: list[dict]) -> float:
    """Mean number of distinct correct samples over the problems with at least one correct sample, pooled
    over the runs given (nan when none solved anything)."""
    solved = [d for o in outcomes for d, c in zip(o["distinct_correct"], o["correct"]) if c > 0]
    return sum(solved) / len(solved) if solved else float("nan")


def exploration_table(start: dict | None, runs: dict[str, dict[int, dict]],
                      start_correct: list[list[int]] | None = None) -> list[str]:
    """Markdown rows: pass@j at the start and per variant at the end (mean over seeds), and distinct
    correct solutions per solved problem (pooled over seeds). With `start_correct` (each start evaluation's
    correct samples per problem, as the report's Results table averages them) the start's pass@j is the mean
    over those evaluations; its distinct count is always `start`'s (one evaluation)."""
    sample = start or next((o for by in runs.values() for o in by.values()), None)
    if sample is None or not sample["k"]:
        return []
    js = list(pass_curve(sample))
    lines = ["| variant | seeds | " + " | ".join(f"pass@{j}" for j in js) + " | distinct correct / solved |",
             "|" + " --- |" * (3 + len(js))]
    if start_correct:
        curves = [pass_curve({"k": sample["k"], "correct": [int(x) for x in c]}) for c in start_correct]
        distinct = f"{distinct_per_solved([start]):.2f}" if start is not None else "-"
        lines.append(f"| *start* | {len(curves)} | " + " | ".join(f"{sum(c[j] for c in curves) / len(curves):.3f}"
                                                            for j in js) + f" | {distinct} |")
    elif start is not None:
        curve = pass_curve(start)
        lines.append("| *start* | - | " + " | ".join(f"{curve[j]:.3f}" for j in js) +
                     f" | {distinct_per_solved([start]):.2f} |")
    for name, by_seed in runs.items():
        curves = [pass_curve(o) for o in by_seed.values()]
        cells = [f"{mean_ci([c[j] for c in curves]).mean:.3f}" for j in js]
        distinct = distinct_per_solved(list(by_seed.values()))
        lines.append(f"| {name} | {len(curves)} | " + " | ".join(cells) + f" | {distinct:.2f} |")
    return lines


def bootstrap_rows(runs: dict[str, dict[int, dict]], baseline: str, *, resamples: int = 2000) -> list[str]:
    """Markdown rows: greedy accuracy difference against `baseline` with a problem-level bootstrap 95%
    interval over the seeds both have (problems paired by id)."""
    if baseline not in runs:
        return []
    lines = [f"| variant − {baseline} | seeds | problems | Δ greedy acc | 95% bootstrap interval |",
             "|" + " --- |" * 5]
    base = runs[baseline]
    for name, by_seed in runs.items():
        seeds = sorted(set(by_seed) & set(base))
        if name == baseline or not seeds:
            continue
        ids = base[seeds[0]]["ids"]
        if any(by_seed[s]["ids"] != ids or base[s]["ids"] != ids for s in seeds):
            continue  # not the same problems: no paired comparison
        result = bootstrap_difference([by_seed[s]["greedy"] for s in seeds], [base[s]["greedy"] for s in seeds],
                                      resamples=resamples)
        lines.append(f"| {name} | {len(seeds)} | {len(ids)} | {result.estimate:+.3f} | "
                     f"[{result.low:+.3f}, {result.high:+.3f}] |")
    return lines


def outcome_section(out: Path, run_dirs: dict[str, dict[int, Path]], baselines: list[str],
                    start_correct: list[list[int]] | None = None) -> str:
    """The report's per-problem subsection for the study folder `out` and its runs' folders, or '' when
    no run recorded its problems; `start_correct` as for `exploration_table`."""
    start, outcomes = load_outcomes(out, run_dirs)
    if not outcomes:
        return ""
    boot = [line for b in baselines for line in ["", *bootstrap_rows(outcomes, b)]]
    return f"""
### Per problem: bootstrap over seeds x problems, pass@k at start and end, distinct solutions

Greedy accuracy differences with a 95% percentile interval from a paired bootstrap that resamples seeds
and problems together (2000 resamples): it counts the finite test set as well as the seeds.
{chr(10).join(boot)}

Unbiased pass@j from the k samples of the final evaluation of each run (mean over seeds), against the
initial checkpoint: a method that narrows exploration gains at small j and loses at large j. The last
column is the mean number of distinct correct completions among the k samples of a solved problem.
{START_NOTE if start_correct else ""}
{chr(10).join(exploration_table(start, outcomes, start_correct))}
"""
