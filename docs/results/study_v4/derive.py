"""Study v4's numbers, re-derived from its committed raw tables alone.

    python docs/results/study_v4/derive.py plateau docs/results/study_v4/plateau   # report.md, numbers.json, frontier.png

Part a (the pre-registration's "a. Plateau"): for every (method, configuration), the seed-mean validation avg@16
trajectory, the level L(s) (the mean over seeds and over the evaluations at s − 200, s − 100 and s), the plateau
step by the pre-registered rule (`plateau_step`) and whether the arm is still rising at the last step; the
frontier (`popo.study.frontier_report`), and POPO's and RAFT's pass@16 at matched avg@16 against every GRPO
configuration and step, and their avg@16 at matched rows. The pre-registered tests of a (POPO − GRPO and RAFT −
GRPO avg@16 at step 2,000, Holm over differences and over TOSTs at ±0.0288) run only once every arm has its 3
seeds; until then the report says what it has and tests nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from popo.study.analysis import read_rows
from popo.study.frontier import Trajectories, from_tables, mean_curve
from popo.study.frontier_report import draw_frontier, frontier_lines


def _sibling(name: str):
    """This folder's `name`.py as a module of its own name (study v3 has a `collect` too: no sys.path clash)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"study_v4_{name}", Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_collect = _sibling("collect")
OUTCOME_FIELDS, OUTCOMES = _collect.OUTCOME_FIELDS, _collect.OUTCOMES
TRAJECTORY_FIELDS, TRAJECTORIES = _collect.TRAJECTORY_FIELDS, _collect.TRAJECTORIES

SEEDS, RISE, WINDOW, MARGIN = 3, 0.005, 300, 0.028812  # the pre-registration's plateau rule and v3's margin


def levels(steps: np.ndarray, avg: np.ndarray) -> dict[int, float]:
    """L(s): the mean of the seed-mean avg@16 at s − 200, s − 100 and s, for every s where all three exist."""
    at = dict(zip(steps.tolist(), avg.tolist()))
    return {s: float(np.mean([at[s - 200], at[s - 100], at[s]])) for s in at if s - 200 in at and s - 100 in at}


def plateau_step(level: dict[int, float]) -> int | None:
    """The smallest s with L(s' + 300) − L(s') < 0.005 for every s' ≥ s (s' + 300 within the run); None when the
    last such difference is still ≥ 0.005 (still rising at the end)."""
    rises = {s: level[s + WINDOW] - level[s] for s in sorted(level) if s + WINDOW in level}
    if not rises:
        return None
    found = None
    for s in sorted(rises, reverse=True):
        if rises[s] >= RISE:
            break
        found = s
    return found


def arm_rows(sets: list[Trajectories]) -> tuple[list[str], dict]:
    lines = ["| method | config | seeds | final step | final avg@16 | final pass@16 | L(final) | L(final) − L(final − 300) "
             "| plateau step | rows through forward+backward |", "|" + " --- |" * 10]
    numbers = {}
    for t in sets:
        avg, breadth = mean_curve(t, t.k)
        level = levels(t.steps, avg)
        last = int(t.steps[-1])
        rise = level[last] - level[last - WINDOW] if last - WINDOW in level else float("nan")
        step = plateau_step(level)
        rows = float(t.compute["rows"][:, -1].mean())
        numbers[f"{t.method} {t.config}"] = {"seeds": len(t.seeds), "final_step": last, "avg": float(avg[-1]),
                                             "pass": float(breadth[-1]), "level": level[last], "rise": rise,
                                             "plateau_step": step, "rows": rows}
        shown = "still rising" if step is None else str(step)
        lines.append(f"| {t.method} | {t.config} | {len(t.seeds)} of {SEEDS} | {last} | {avg[-1]:.3f} | "
                     f"{breadth[-1]:.3f} | {level[last]:.3f} | {rise:+.3f} | {shown} | {rows:,.0f} |")
    return lines, numbers


def plateau_report(data: Path) -> dict:
    sets = from_tables(read_rows(data / TRAJECTORIES, TRAJECTORY_FIELDS), read_rows(data / OUTCOMES, OUTCOME_FIELDS))
    table, numbers = arm_rows(sets)
    complete = all(len(t.seeds) == SEEDS for t in sets) and {t.method for t in sets} >= {"grpo", "popo", "raft"}
    figure = draw_frontier(sets, data / "frontier.png")
    text = ["# Study v4, part a: plateau (validation)", "",
            "Made by `python docs/results/study_v4/derive.py plateau docs/results/study_v4/plateau` from "
            "`trajectories.csv.gz` and `outcomes.csv.gz` in this folder (every evaluation of every finished run, "
            "each problem's correct samples of 16). Seed means; L(s) and the plateau rule are the "
            "pre-registration's.", "",
            ("**All arms have their 3 seeds.**" if complete else
             "**Not all arms have their 3 seeds yet: what follows is descriptive, and the pre-registered tests of a "
             "do not run.** Intervals below resample the problems (and the seeds there are)."), "", *table, ""]
    if figure is not None:
        text += ["![frontier](frontier.png)", ""]
    text += frontier_lines(sets, "grpo", resamples=1000)
    (data / "report.md").write_text("\n".join(text) + "\n")
    (data / "numbers.json").write_text(json.dumps({"complete": complete, "arms": numbers}, indent=1,
                                                  sort_keys=True) + "\n")
    return numbers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plateau")
    p.add_argument("data", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(plateau_report(args.data), indent=1))


if __name__ == "__main__":
    main()
