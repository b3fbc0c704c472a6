"""Study v3's ledger: which runs the committed raw data already holds, which are still to run, and the rate
each arm's tuning chose, all read from the committed tables alone.

The study spans several sittings on machines that keep nothing between them (`runs/` is not committed), so
the committed raw data is the record of what has finished: `study_v3.sh` asks this script for the runs still
missing, runs them, and merges them into the tables (`derive.py collect` keeps the rows it already had).

    python docs/results/study_v3/ledger.py todo docs/results/study_v3/countdown/tuning --arms grpo,popo \
        --rates 3e-6,1e-5,3e-5,1e-4,3e-4 --seeds 0,1,2 --steps 500
    # one line per batch of runs: SEED ARMS RATES (comma-separated), the full cartesian product missing
    python docs/results/study_v3/ledger.py choose docs/results/study_v3/countdown/tuning --arms grpo,popo \
        --rates 3e-6,1e-5,3e-5,1e-4,3e-4 --seeds 0,1,2 --steps 500 --metric avg
    # tuning.json in the folder: each arm's mean final validation metric per rate and the chosen rate, by
    # the rule of `popo compare --tune` (popo.study.tune.choose, at_edge); refused while a run is missing
    python docs/results/study_v3/ledger.py finals docs/results/study_v3/countdown --arms grpo,popo \
        --seeds 3,4,5,6 --steps 500
    # the final (test split) runs still missing: one line ARM FIRST_SEED COUNT per contiguous range of seeds
    python docs/results/study_v3/ledger.py explored docs/results/study_v3/countdown --arms popo --seeds 3,4,5
    # exit status 0 when exploration.csv.gz holds those runs of those arms (pass@k up to 256), else 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from popo.study.analysis import CURVE_FIELDS, OUTCOME_FIELDS, read_rows
from popo.study.tune import at_edge, choose

CURVES, EXPLORATION, LABEL, KEY = "curves.csv.gz", "exploration.csv.gz", "lr", "optim.lr"


def finished(folder: Path, steps: int, split: str | None = None) -> dict[tuple[str, int], dict[str, float]]:
    """{(method, seed): final evaluation} for every run in `folder`'s curves that reached `steps`."""
    path = folder / CURVES
    rows = read_rows(path, CURVE_FIELDS) if path.is_file() else []
    out = {}
    for r in rows:
        if int(r["step"]) == steps and (split is None or r["split"] == split):
            k = int(r["k"])
            out[(r["method"], int(r["seed"]))] = {"greedy_acc": float(r["greedy_acc"]), f"avg@{k}": float(r["avg"]),
                                                  f"pass@{k}": float(r["pass"])}
    return out


def name(arm: str, rate: str) -> str:
    """The run name `popo compare --tune` and `popo sweep --grid optim.lr=...` give an arm at a rate."""
    return f"{arm} {LABEL}={rate}"


def todo(folder: Path, arms: list[str], rates: list[str], seeds: list[int], steps: int) -> list[tuple[int, list[str], list[str]]]:
    """Missing (arm, rate, seed) runs as batches (seed, arms, rates) whose cartesian product is all missing:
    per seed, the arms grouped by the set of rates they lack."""
    done = finished(folder, steps)
    batches = []
    for seed in seeds:
        by_rates: dict[tuple[str, ...], list[str]] = {}
        for arm in arms:
            missing = tuple(r for r in rates if (name(arm, r), seed) not in done)
            if missing:
                by_rates.setdefault(missing, []).append(arm)
        batches += [(seed, group, list(missing)) for missing, group in by_rates.items()]
    return batches


def finals(folder: Path, arms: list[str], seeds: list[int], steps: int) -> list[tuple[str, int, int]]:
    """Missing final runs (test split) as (arm, first seed, count) over contiguous ranges of `seeds`."""
    done = finished(folder, steps, split="test")
    ranges = []
    for arm in arms:
        missing = [s for s in seeds if (arm, s) not in done]
        for seed in missing:
            if ranges and ranges[-1][0] == arm and ranges[-1][1] + ranges[-1][2] == seed:
                ranges[-1] = (arm, ranges[-1][1], ranges[-1][2] + 1)
            else:
                ranges.append((arm, seed, 1))
    return ranges


def explored(folder: Path, arms: list[str], seeds: list[int]) -> bool:
    """Whether the committed exploration table holds every (arm, seed) asked for."""
    path = folder / EXPLORATION
    have = {(r["method"], int(r["seed"])) for r in read_rows(path, OUTCOME_FIELDS)} if path.is_file() else set()
    return all((arm, seed) in have for arm in arms for seed in seeds)


def chosen_rates(folder: Path, arms: list[str], rates: list[str], seeds: list[int], steps: int,
                 metric: str) -> dict:
    """tuning.json from the committed curves: refused while any (arm, rate, seed) run is missing."""
    done = finished(folder, steps)
    missing = [(arm, r, s) for arm in arms for r in rates for s in seeds if (name(arm, r), s) not in done]
    if missing:
        raise SystemExit(f"{folder}: {len(missing)} tuning runs not finished yet, e.g. {missing[:3]}")
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for (method, seed), final in done.items():
        if seed in seeds:
            summary.setdefault(method, {})[seed] = final
    record = {"key": KEY, "metric": f"validation {metric}", "seeds": seeds, "steps": steps}
    for arm in arms:
        best, means = choose(summary, [], arm, KEY, rates, metric)
        record[arm] = {"means": means, "chosen": best, "at_edge": at_edge(best, rates)}
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["todo", "choose", "finals", "explored"])
    parser.add_argument("folder", type=Path, help="a data folder holding curves.csv.gz")
    parser.add_argument("--arms", required=True)
    parser.add_argument("--rates", default="", help="the tuning grid (todo, choose)")
    parser.add_argument("--seeds", required=True, help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=0, help="the runs' length (a finished run's last step)")
    parser.add_argument("--metric", default="avg@16", help="the final validation metric `choose` maximises")
    args = parser.parse_args(argv)
    arms, rates = args.arms.split(","), args.rates.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.command == "explored":
        return 0 if explored(args.folder, arms, seeds) else 1
    if args.command == "finals":
        for arm, first, count in finals(args.folder, arms, seeds, args.steps):
            print(arm, first, count)
        return 0
    if args.command == "todo":
        for seed, group, missing in todo(args.folder, arms, rates, seeds, args.steps):
            print(seed, ",".join(group), ",".join(missing))
        return 0
    record = chosen_rates(args.folder, arms, rates, seeds, args.steps, args.metric)
    (args.folder / "tuning.json").write_text(json.dumps(record, indent=1) + "\n")
    for arm in arms:
        edge = " (AT THE EDGE of the grid: extend it)" if record[arm]["at_edge"] else ""
        print(f"{arm}: {KEY}={record[arm]['chosen']}{edge}  " +
              ", ".join(f"{r}: {m:.4f}" for r, m in record[arm]["means"].items()), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
