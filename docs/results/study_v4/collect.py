"""Study v4's raw tables from finished run folders, and the runs the committed tables still lack.

    python docs/results/study_v4/collect.py collect runs/study-v4/plateau --out docs/results/study_v4/plateau
    python docs/results/study_v4/collect.py todo docs/results/study_v4/plateau --arms grpo,popo,raft --seeds 0,1,2 \
        --config lr=1e-4

`collect` reads every finished run (a ``done.json`` beside its ``metrics.jsonl`` and a last evaluation at its
``train.steps``) under the study folders given
and writes, or extends (rows of runs it does not see again are kept), two tables in ``--out``:

- ``trajectories.csv.gz``: a row per (method, config, seed, evaluation step): greedy accuracy, avg@k, pass@k,
  the sampled per-token entropy, the rows, tokens and seconds of training before it, and the samples' KL to the
  start (``start_kl``, runs with `train.eval_start_kl`; nan otherwise), and the spread of the credit weights over
  each prompt's positives logged at that step (``weight_dev``: `weight_dev_uniform`; nan where not logged);
- ``outcomes.csv.gz``: a row per (method, config, seed, step, problem): greedy 0/1 and correct samples of k.

A run's method is its ``algo.name`` and its configuration its learning rate (``lr=1e-4``). `todo` prints, one per
line, ``ARMS FIRST COUNT`` (a comma-separated set of arms and a range of seeds) for the
runs whose trajectories the tables do not hold yet, grouping arms that lack the same seeds so one
`popo compare` keeps every worker busy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from popo.study.analysis import read_rows, write_rows
from popo.study.frontier_report import rate_label
from popo.study.trajectory import trajectory

TRAJECTORY_FIELDS = ("task", "split", "method", "config", "seed", "step", "greedy_acc", "avg", "pass", "k",
                     "sample_nll", "rows", "tokens", "seconds")
LATER_FIELDS = ("start_kl", "weight_dev")  # columns added after the first tables: always written, nan where absent
OUTCOME_FIELDS = ("task", "method", "config", "seed", "step", "problem", "greedy", "correct", "k")
TRAJECTORIES, OUTCOMES = "trajectories.csv.gz", "outcomes.csv.gz"


def _run_facts(run_dir: Path, label: tuple[str, ...] = ()) -> dict:
    """The run's task, split, method, seed and configuration: ``lr=1e-4``, followed by ``name=value`` for each
    setting in `label` (``algo.alpha`` gives ``alpha=0.3``): part d's runs differ in more than their rate."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    source = config["data"]["eval_source"]
    settings = []
    for key in label:
        section, name = key.split(".", 1)
        settings.append(f"{name}={config[section][name]:g}")
    return {"task": config["testbed"]["task"] + str(config["testbed"].get("numbers", "")),
            "split": source.partition(":")[2] or "validation", "method": config["algo"]["name"],
            "config": " ".join([rate_label(float(config["optim"]["lr"])), *settings]),
            "seed": int(config["train"]["seed"])}


def _weight_spread(run_dir: Path) -> dict[int, float]:
    """Step -> `weight_dev_uniform` (how far the credit weights over a prompt's positives are from uniform), at
    the steps the run logged diagnostics; methods without such weights log none."""
    from popo.tracking import read_metrics

    return {int(r["step"]): float(r["weight_dev_uniform"]) for r in read_metrics(run_dir / "metrics.jsonl")
            if "step" in r and "weight_dev_uniform" in r}


def run_rows(run_dir: Path, label: tuple[str, ...] = ()) -> tuple[list[dict], list[dict]]:
    """The two tables' rows of one finished run."""
    facts, curves, outcomes = _run_facts(run_dir, label), [], []
    spread = _weight_spread(run_dir)
    for p in trajectory(run_dir):
        curves.append({**facts, "step": p.step, "greedy_acc": p.greedy_acc, "avg": p.avg, "pass": p.pass_k,
                       "k": p.k, "sample_nll": p.sample_nll, "rows": p.rows, "tokens": p.tokens,
                       "seconds": round(p.seconds, 3), "start_kl": p.start_kl,
                       "weight_dev": spread.get(p.step, float("nan"))})
        ids = [f"{facts['split']}-{i}" for i in range(len(p.greedy))]
        outcomes += [{**{f: facts[f] for f in ("task", "method", "config", "seed")}, "step": p.step, "problem": q,
                      "greedy": int(g), "correct": int(c), "k": p.k}
                     for q, g, c in zip(ids, p.greedy, p.correct or [0] * len(ids))]
    return curves, outcomes


def _key(row: dict) -> tuple:
    return row["task"], row["method"], row["config"], int(row["seed"])


def finished(run_dir: Path) -> bool:
    """A run is finished when its last evaluation is at its config's train.steps: a ``done.json`` alone is not
    enough, since a run continued with `popo train --resume ... train.steps=N` keeps its earlier one."""
    import yaml

    target = int(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"])
    points = trajectory(run_dir)
    return bool(points) and points[-1].step == target


def collect(folders: list[Path], out: Path, label: tuple[str, ...] = ()) -> int:
    found = sorted({done.parent for folder in folders for done in Path(folder).rglob("done.json")})
    runs = [run_dir for run_dir in found if finished(run_dir)]
    for run_dir in sorted(set(found) - set(runs)):
        print(f"skipped, not finished: {run_dir}", file=sys.stderr)
    new_curves, new_outcomes = [], []
    for run_dir in runs:
        curves, outcomes = run_rows(run_dir, label)
        new_curves += curves
        new_outcomes += outcomes
    seen = {_key(r) for r in new_curves}
    out.mkdir(parents=True, exist_ok=True)
    for name, fields, new in ((TRAJECTORIES, TRAJECTORY_FIELDS, new_curves), (OUTCOMES, OUTCOME_FIELDS, new_outcomes)):
        kept = [r for r in (read_rows(out / name, fields) if (out / name).exists() else []) if _key(r) not in seen]
        written = fields + (LATER_FIELDS if name == TRAJECTORIES else ())
        rows = [{**{f: float("nan") for f in written}, **r} for r in kept + new]
        write_rows(out / name, written, sorted(rows, key=lambda r: (*_key(r), int(r["step"]), str(r.get("problem", "")))))
    return len(runs)


def todo(data: Path, arms: list[str], seeds: list[int], config: str) -> list[str]:
    have = {(r["method"], str(r["config"]), int(r["seed"]))
            for r in (read_rows(data / TRAJECTORIES, TRAJECTORY_FIELDS) if (data / TRAJECTORIES).exists() else [])}
    missing: dict[tuple[int, ...], list[str]] = {}
    for arm in arms:
        lacking = tuple(s for s in seeds if (arm, config, s) not in have)
        if lacking:
            missing.setdefault(lacking, []).append(arm)
    lines = []
    for lacking, group in missing.items():
        start = lacking[0]  # consecutive ranges of seeds
        for a, b in zip(lacking, lacking[1:] + (None,)):
            if b != a + 1:
                lines.append(f"{','.join(group)} {start} {a - start + 1}")
                start = b
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("folders", nargs="+", type=Path)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--label", default="", help="settings named in each run's configuration besides its rate, "
                                                "comma-separated (part d: algo.alpha,algo.weight_temperature,algo.tau)")
    t = sub.add_parser("todo")
    t.add_argument("data", type=Path)
    t.add_argument("--arms", required=True)
    t.add_argument("--seeds", required=True)
    t.add_argument("--config", default="lr=1e-4", help="the configuration the runs need (default lr=1e-4)")
    args = parser.parse_args(argv)
    if args.command == "collect":
        label = tuple(k for k in args.label.split(",") if k)
        print(json.dumps({"runs": collect(args.folders, args.out, label), "out": str(args.out)}))
    else:
        for line in todo(args.data, args.arms.split(","), [int(s) for s in args.seeds.split(",")], args.config):
            print(line)  # nothing at all when every run is there (a blank line would be read as a batch)


if __name__ == "__main__":
    main()
