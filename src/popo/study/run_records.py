"""A study folder's finished runs as records: their metrics and done files by method and seed, the final and
the step-0 evaluations (`popo.study.report` and `popo.study.paired_report` read them through these)."""

from __future__ import annotations

import json
from pathlib import Path

from popo.step_log import OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY
from popo.study.runs import Study
from popo.tracking import read_metrics


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


def start_evaluations(runs: dict[str, dict[int, list[dict]]]) -> list[dict]:
    """The finished runs' step-0 records (scores, per-problem outcomes), each evaluation once (runs of one seed
    sample the start alike): the report's start is their mean, in its Results and pass@j tables alike."""
    out: dict[str, dict] = {}
    for records in (records for by_seed in runs.values() for records in by_seed.values()):
        first = next((r for r in records if r.get("step") == 0 and "eval/greedy_acc" in r), None)
        if first is not None:
            scores = {k: v for k, v in first.items() if k.startswith("eval/") and "time" not in k}
            key = json.dumps([first.get(OUTCOMES_KEY), first.get(SAMPLE_OUTCOMES_KEY), scores], sort_keys=True)
            out.setdefault(key, first)
    return list(out.values())


def mean_start_metrics(runs: dict[str, dict[int, list[dict]]], metrics: list[str]) -> list[float]:
    """Each metric at step 0, averaged over the start's evaluations (`start_evaluations`; 0.0 when none)."""
    starts = [start_eval([r]) for r in start_evaluations(runs)]
    return [sum(s[m] for s in starts) / max(1, len(starts)) for m in metrics]
