"""Study v3's raw tables from finished study folders (`derive.py collect` runs this): per-seed, per-problem
outcomes, every evaluation's curve point and the exploration's deep samples, merged into the committed tables
so that a study spanning several sittings keeps the rows of runs a sitting does not see again."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from popo.study.analysis import CURVE_FIELDS, OUTCOME_FIELDS, read_rows, write_rows
from popo.tracking import read_metrics

OUTCOMES, CURVES, EXPLORATION = "outcomes.csv.gz", "curves.csv.gz", "exploration.csv.gz"
EXPLORED = "problems-k*-n*.json"  # docs/results/pass_at_k.py's per-run outcomes (k samples per problem)


def _split(config: dict) -> str:
    return "test" if str(config["data"]["eval_source"]).endswith(":test") else "validation"


def collect(studies: list[Path], task: str, out: Path) -> tuple[int, int]:
    """Write the raw tables of `studies` into `out`; returns (outcome rows, curve rows)."""
    from popo.study.runs import load_study

    outcomes, curves, explored = [], [], []
    for study_dir in studies:
        study = load_study(study_dir)
        start = study_dir / "start-problems.json"
        for variant in study.variants:
            for run in sorted((study_dir / variant.dirname).glob("seed-*")):
                if not (run / "done.json").is_file():
                    continue  # unfinished runs are not data
                seed = int(run.name.removeprefix("seed-"))
                split = _split(yaml.safe_load((run / "config.yaml").read_text()))
                for record in read_metrics(run / "metrics.jsonl"):
                    k = next((int(key.split("@")[1]) for key in record if key.startswith("eval/avg@")), 0)
                    if "eval/greedy_acc" in record:
                        curves.append({"task": task, "split": split, "method": variant.name, "seed": seed,
                                       "step": record["step"], "greedy_acc": record["eval/greedy_acc"],
                                       "avg": record.get(f"eval/avg@{k}", ""), "pass": record.get(f"eval/pass@{k}", ""),
                                       "k": k})
                if (run / "problems.json").is_file():
                    outcomes += _outcome_rows(json.loads((run / "problems.json").read_text()), task, variant.name, seed)
                for path in sorted(run.glob(EXPLORED)):
                    explored += _outcome_rows(json.loads(path.read_text()), task, variant.name, seed)
        if start.is_file() and not any(r["method"] == "start" for r in outcomes):  # one start: every study
            outcomes += _outcome_rows(json.loads(start.read_text()), task, "start", 0)  # starts from it
        for path in sorted(study_dir.glob("start-" + EXPLORED)):  # n500.json, n500-seed-4.json, ...
            problems = json.loads(path.read_text())  # the start under each evaluation seed it was sampled with
            explored += _outcome_rows(problems, task, "start", int(problems["run_seed"]))
    out.mkdir(parents=True, exist_ok=True)
    outcomes = merged(out / OUTCOMES, OUTCOME_FIELDS, _kept_start(out / OUTCOMES, outcomes), ("task", "method", "seed"))
    curves = merged(out / CURVES, CURVE_FIELDS, curves, ("task", "split", "method", "seed"))
    write_rows(out / OUTCOMES, OUTCOME_FIELDS, outcomes)
    write_rows(out / CURVES, CURVE_FIELDS, curves)
    if explored or (out / EXPLORATION).is_file():  # pass@k up to k on a prefix of the test split, 3 seeds an arm
        explored = merged(out / EXPLORATION, OUTCOME_FIELDS, explored, ("task", "method", "seed"))
        write_rows(out / EXPLORATION, OUTCOME_FIELDS, explored)
    return len(outcomes), len(curves)


def _kept_start(path: Path, outcomes: list[dict]) -> list[dict]:
    """`outcomes` without its start when the table at `path` already holds a start that differs: every arm is
    compared with the one start the table was first given, and a study that sampled its start otherwise (another
    evaluation seed) is named, not silently swapped in."""
    if not path.is_file():
        return outcomes
    committed = {r["problem"]: (r["greedy"], r["correct"], r["distinct"]) for r in read_rows(path, OUTCOME_FIELDS)
                 if r["method"] == "start"}
    new = {r["problem"]: (r["greedy"], r["correct"], r["distinct"]) for r in outcomes if r["method"] == "start"}
    if not committed or not new or new == committed:
        return outcomes
    print(f"{path}: a collected study's start differs from the start already in the table; the table's is kept")
    return [r for r in outcomes if r["method"] != "start"]


def merged(path: Path, fields: tuple[str, ...], new: list[dict], key: tuple[str, ...]) -> list[dict]:
    """`new` plus the rows already in `path` of every run `new` does not hold (a study spans several
    sittings, each collecting the runs it finished: the committed tables are the record of what is done)."""
    if not path.is_file():
        return new
    fresh = {tuple(str(r[f]) for f in key) for r in new}
    kept = [r for r in read_rows(path, fields) if tuple(str(r[f]) for f in key) not in fresh]
    return kept + new


def _outcome_rows(problems: dict, task: str, method: str, seed: int) -> list[dict]:
    return [{"task": task, "method": method, "seed": seed, "problem": pid, "greedy": int(g), "correct": c,
             "k": problems["k"], "distinct": d}
            for pid, g, c, d in zip(problems["ids"], problems["greedy"], problems["correct"],
                                    problems["distinct_correct"])]
