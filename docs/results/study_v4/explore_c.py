"""Study v4, c2's exploration to pass@256 (addendum 5; exploratory: no test, no correction).

    python docs/results/study_v4/explore_c.py collect RAW docs/results/study_v4/task_c/c2/explore   # outcomes.csv.gz
    python docs/results/study_v4/explore_c.py report docs/results/study_v4/task_c/c2/explore       # report.md, numbers.json

`collect` reads the `popo eval` records that `task_c.sh explore` writes (``RAW/ARM-STEP-seed-S.records.jsonl``: the
start as ``start-0``, each arm at its stopping step, GRPO at s_G; seeds 100-102, 256 samples on the first 500
problems of c's test split) into one raw table: each problem's correct samples of 256. `report` gives each
arm's seed-mean pass@k for k = 1, 4, 16, 64, 256 (unbiased) and, for POPO, RAFT and the start, the difference from
GRPO at s_G paired by seed and problem with two-way bootstrap intervals, from that table and c2's committed
choice alone.
`same-run` checks that a run trained again for the exploration (a later sitting no longer holds the finals' run
folders) is the finals' run: the rows and tokens through forward+backward before each named step equal those the
committed finals' trajectories record for that arm and seed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from popo.study.analysis import outcome_grids, pass_at, read_rows, two_way_bootstrap, write_rows
from popo.tracking import read_metrics

HERE = Path(__file__).resolve().parent
OUTCOMES, FIELDS = "outcomes.csv.gz", ("method", "step", "seed", "problem", "correct", "k")
KS = (1, 4, 16, 64, 256)
NAME = re.compile(r"^(?P<method>[a-z0-9_]+)-(?P<step>\d+)-seed-(?P<seed>\d+)\.records\.jsonl$")


def _evaluation(row: dict) -> str:
    return f"{row['method']}-{row['step']}-seed-{row['seed']}"


def collect(raw: Path, out: Path) -> int:
    """Every ``ARM-STEP-seed-S.records.jsonl`` in `raw` as rows of `out`/outcomes.csv.gz, kept beside the rows of
    evaluations the table already holds and `raw` does not (an earlier sitting's); the number of files read."""
    rows, files = [], sorted(p for p in raw.glob("*.records.jsonl") if NAME.match(p.name))
    for path in files:
        name = NAME.match(path.name)
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            record = json.loads(line)
            if not record.get("correct"):
                raise ValueError(f"{path}:{line_no}: field 'correct' is empty (the evaluation drew no samples)")
            rows.append({"method": name["method"], "step": int(name["step"]), "seed": int(name["seed"]),
                         "problem": record["id"], "correct": int(sum(bool(x) for x in record["correct"])),
                         "k": len(record["correct"])})
    fresh = {_evaluation(r) for r in rows}
    earlier = [r for r in read_rows(out / OUTCOMES, FIELDS) if _evaluation(r) not in fresh] \
        if (out / OUTCOMES).is_file() else []
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / OUTCOMES, FIELDS, earlier + rows)
    return len(files)


def committed(folder: Path) -> set[str]:
    """The evaluations (``ARM-STEP-seed-S``) the table in `folder` holds."""
    path = folder / OUTCOMES
    return {_evaluation(r) for r in read_rows(path, FIELDS)} if path.is_file() else set()


def cells(rows: list[dict]) -> dict[tuple[str, int], tuple[np.ndarray, int]]:
    """(method, step) -> ([seeds, problems] correct counts, samples per problem); seeds and problems sorted."""
    out = {}
    for key, grid in outcome_grids(rows, ("method", "step"), ("correct", "k")).items():
        if len(np.unique(grid["k"])) != 1:
            raise ValueError(f"{key}: every seed needs every problem with the same number of samples")
        out[key] = (grid["correct"], int(grid["k"].flat[0]))
    return out


def report(folder: Path, choice: dict, *, resamples: int = 10_000) -> dict:
    found = cells(read_rows(folder / OUTCOMES, FIELDS))
    base = ("grpo", choice["s_G"])
    order = [("start", 0), ("popo", choice["s_P"]), ("raft", choice["raft_stop"]), base]
    order += sorted(k for k in found if k not in order)
    lines = ["| arm | step | seeds | problems | " + " | ".join(f"pass@{k}" for k in KS) + " |", "|" + " --- |" * (4 + len(KS))]
    numbers: dict = {"levels": {}, "differences": {}}
    for key in (k for k in order if k in found):
        counts, n = found[key]
        level = {f"pass@{k}": float(pass_at(counts, n, k).mean()) for k in KS if k <= n}
        numbers["levels"][f"{key[0]}@{key[1]}"] = level
        lines.append(f"| {key[0]} | {key[1]} | {counts.shape[0]} | {counts.shape[1]} | "
                     + " | ".join(f"{level[f'pass@{k}']:.3f}" if f"pass@{k}" in level else "-" for k in KS) + " |")
    if base in found:
        lines += ["", f"Differences from GRPO at s_G = {choice['s_G']} (paired by seed and problem; two-way bootstrap, "
                  f"{resamples:,} resamples; uncorrected, exploratory):", "",
                  "| arm − grpo@s_G | " + " | ".join(f"pass@{k} [95%]" for k in KS) + " |", "|" + " --- |" * (1 + len(KS))]
        y, n_y = found[base]
        for key in (k for k in order[:3] if k in found):
            x, n_x = found[key]
            shown = []
            for k in KS:
                if k > min(n_x, n_y) or x.shape != y.shape:
                    shown.append("-")
                    continue
                t = two_way_bootstrap(pass_at(x, n_x, k), pass_at(y, n_y, k), resamples=resamples)
                numbers["differences"][f"{key[0]}@{key[1]} pass@{k}"] = {"estimate": t.estimate, "low": t.low,
                                                                         "high": t.high}
                shown.append(f"{t.estimate:+.3f} [{t.low:+.3f}, {t.high:+.3f}]")
            lines.append(f"| {key[0]}@{key[1]} | " + " | ".join(shown) + " |")
    (folder / "report.md").write_text("\n".join([
        "# Study v4, c2: exploration to pass@256 (c's test split, first 500 problems; exploratory)", "",
        f"Made by `python docs/results/study_v4/explore_c.py report {folder.as_posix()}` from `{OUTCOMES}` beside it "
        "and c2's committed choice (addendum 5): the start and each arm at its stopping step, seeds 100-102, 256 "
        "samples at temperature 1; seed means of the unbiased pass@k.", "", *lines, ""]))
    (folder / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    return numbers


def same_run(run_dir: Path, finals: Path, steps: list[int]) -> list[str]:
    """How the training `run_dir` logged differs from the committed finals' trajectory of its arm and seed in the
    rows and tokens before each of `steps`; empty when it is the same run."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    method, seed = config["algo"]["name"], int(config["train"]["seed"])
    last = {int(r["step"]): r for r in read_metrics(run_dir / "metrics.jsonl") if "step" in r}  # resumes repeat
    logged, rows, tokens = {0: (0, 0)}, 0, 0
    for step in sorted(s for s in last if s > 0):
        rows += int(last[step].get("trained_rollouts", 0))
        tokens += int(last[step].get("trained_tokens", 0))
        logged[step] = (rows, tokens)
    committed = {int(r["step"]): (int(r["rows"]), int(r["tokens"]))
                 for r in read_rows(finals / "trajectories.csv.gz", ("method", "seed", "step", "rows", "tokens"))
                 if r["method"] == method and int(r["seed"]) == seed}
    problems = []
    for step in steps:
        if step not in committed:
            problems.append(f"{method} seed {seed}: the finals' trajectories have no step {step}")
        elif logged.get(step) != committed[step]:
            problems.append(f"{method} seed {seed} step {step}: (rows, tokens) {logged.get(step)} in {run_dir}, "
                            f"{committed[step]} in the finals")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("raw", type=Path)
    c.add_argument("out", type=Path)
    r = sub.add_parser("report")
    r.add_argument("folder", type=Path)
    r.add_argument("--choice", type=Path, default=None, help="c2's numbers.json (default: the folder above)")
    r.add_argument("--resamples", type=int, default=10_000)
    s = sub.add_parser("same-run")
    s.add_argument("run_dir", type=Path)
    s.add_argument("finals", type=Path, help="c2's finals tables (task_c/c2/finals)")
    s.add_argument("steps", type=int, nargs="+")
    h = sub.add_parser("has", help="exit status 0 when the table in FOLDER holds evaluation NAME (ARM-STEP-seed-S)")
    h.add_argument("folder", type=Path)
    h.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "has":
        raise SystemExit(0 if args.name in committed(args.folder) else 1)
    if args.command == "same-run":
        problems = same_run(args.run_dir, args.finals, args.steps)
        print("\n".join(problems) or f"{args.run_dir}: the finals' run (rows and tokens at {args.steps})")
        raise SystemExit(1 if problems else 0)
    if args.command == "collect":
        print(f"{collect(args.raw, args.out)} evaluations collected into {args.out / OUTCOMES}")
        return
    choice = json.loads((args.choice or args.folder.parent / "numbers.json").read_text())["finals"]
    print(json.dumps(report(args.folder, choice, resamples=args.resamples)["differences"], indent=1))


if __name__ == "__main__":
    main()
