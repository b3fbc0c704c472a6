"""Study v4, part b's tests on v4-test (the pre-registration's b, addendum 3), from the committed raw tables alone.

    python docs/results/study_v4/derive_b.py docs/results/study_v4/finals   # report.md and numbers.json there

The arms' stopping steps and GRPO's matched step come from b's committed choice (``plateau/numbers.json``, the
same that made the runs: `derive.py finals-plan`). Every comparison pairs seed 100 + i of one arm with seed
100 + i of the other and each problem with itself; intervals and p-values are the two-way bootstrap (seeds and
problems resampled, 10,000 resamples).

- Primary: POPO@s_P − GRPO@s_G in pass@16 (unbiased, from the 64 samples), with the avg@64 difference of the
  same pair and its TOST at ±0.0288 beside it ("matched" when that TOST rejects after Holm).
- Families (Holm): the differences {POPO − GRPO@s_G, RAFT − GRPO@s_G} in pass@16; their TOSTs at ±0.03; the avg@64
  match TOSTs at ±0.0288.
- Secondary, exploratory (uncorrected p): pass@64, greedy accuracy, and POPO − GRPO at GRPO's last step.

Nothing is tested until every arm has all its seeds (addendum 3); until then the report lists what is in.

c2's finals (addendum 5) use the same tests with c2's choice and its own match margin:

    python docs/results/study_v4/derive_b.py docs/results/study_v4/task_c/c2/finals \
        --choice docs/results/study_v4/task_c/c2/numbers.json --key finals
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from popo.study.analysis import outcome_grids, pass_at, read_rows, two_way_bootstrap
from popo.study.stats import holm

HERE = Path(__file__).resolve().parent
MATCH, PASS_MARGIN, K = 0.028812, 0.03, 64  # v3's margin for the avg match; 3 points of pass@16; samples per problem
TRAJECTORIES, OUTCOMES = "trajectories.csv.gz", "outcomes.csv.gz"
OUTCOME_FIELDS = ("task", "method", "config", "seed", "step", "problem", "greedy", "correct", "k")

# per-problem scores of a cell ([seeds, problems] grids), in the levels table's column order
SCORES = {"greedy": lambda c: c["greedy"], "avg@64": lambda c: c["correct"] / K,
          "pass@16": lambda c: pass_at(c["correct"], K, 16), "pass@64": lambda c: (c["correct"] > 0).astype(float)}


def cells(rows: list[dict]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """(method, step) -> {"correct": [S, P] correct of K, "greedy": [S, P]}, seeds and problems sorted."""
    return outcome_grids(rows, ("method", "step"), ("correct", "greedy"))


def _pair(x: dict, y: dict) -> None:
    if len(x["seeds"]) != len(y["seeds"]) or x["problems"] != y["problems"]:
        raise ValueError("b's pairs need the same number of seeds and the same problems in both arms")


def compare(x: dict, y: dict, score: str, *, margin: float = float("nan"), resamples: int = 10_000):
    """x − y in `score` (pass@16, pass@64, avg@64 or greedy) by the two-way bootstrap."""
    _pair(x, y)
    value = SCORES[score]
    return two_way_bootstrap(value(x), value(y), margin=margin, resamples=resamples)


def levels(found: dict, trajectories: list[dict] = ()) -> tuple[list[str], dict]:
    """Each evaluated (arm, step)'s seed means (descriptive): greedy, avg@64, pass@16, pass@64 and, from the
    trajectories' rows, the compute before that step (rows and tokens through forward+backward, training seconds
    without evaluations). Every arm's step 0 is the same start: one row over every arm's start evaluations."""
    scores = SCORES
    spent = {}
    for row in trajectories:
        spent.setdefault((row["method"], int(row["step"])), []).append([row[c] for c in ("rows", "tokens", "seconds")])
    starts = [c for (m, step), c in sorted(found.items()) if step == 0]
    shown = ([("start", 0, starts)] if starts else []) + [(m, step, [c]) for (m, step), c in sorted(found.items())
                                                           if step > 0]
    lines = ["Levels (seed means over the problems; descriptive; seconds: training only, one run per core of two):",
             "", "| arm | step | evaluations | " + " | ".join(scores) + " | rows | tokens | seconds |",
             "|" + " --- |" * (6 + len(scores))]
    numbers = {}
    for m, step, group in shown:
        level = {name: float(np.mean([f(c).mean() for c in group])) for name, f in scores.items()}
        cost = np.mean(spent[(m, step)], axis=0) if (m, step) in spent else np.zeros(3)
        level |= {"rows": float(cost[0]), "tokens": float(cost[1]), "seconds": float(cost[2])}
        numbers[f"{m}@{step}"] = level
        lines.append(f"| {m} | {step} | {sum(len(c['seeds']) for c in group)} | "
                     + " | ".join(f"{level[name]:.4f}" for name in scores)
                     + f" | {level['rows']:,.0f} | {level['tokens']:,.0f} | {level['seconds']:,.0f} |")
    return lines + [""], numbers


def tests_b(data: Path, choice: dict, *, resamples: int = 10_000, part: str = "b on v4-test") -> tuple[list[str], dict]:
    found = cells(read_rows(data / OUTCOMES, OUTCOME_FIELDS))
    stops = {"popo": choice["s_P"], "raft": choice["raft_stop"], "grpo": choice["s_G"]}
    grpo_last = max(choice["s_G"], choice["grpo_stop"])
    have = {m: len(found.get((m, s), {"seeds": []})["seeds"]) for m, s in stops.items()}
    lines = ["Seeds in: " + ", ".join(f"{m} {n} of {choice['seeds']}" for m, n in have.items()) + ".", ""]
    if any(n < choice["seeds"] for n in have.values()):
        return lines + ["**Not every arm has its seeds: nothing is tested yet** (addendum 3).", ""], {"complete": False}
    base = found[("grpo", stops["grpo"])]
    arms = {m: found[(m, stops[m])] for m in ("popo", "raft")}
    diff = {m: compare(a, base, "pass@16", margin=PASS_MARGIN, resamples=resamples) for m, a in arms.items()}
    margin = choice.get("margin", MATCH)  # c2 (addendum 5) carries its own
    match = {m: compare(a, base, "avg@64", margin=margin, resamples=resamples) for m, a in arms.items()}
    p_diff, r_diff = holm([t.p_difference for t in diff.values()])
    p_equiv, r_equiv = holm([t.p_equivalence for t in diff.values()])
    p_match, r_match = holm([t.p_equivalence for t in match.values()])
    level_lines, level_numbers = levels(found, read_rows(data / TRAJECTORIES, ("method", "step", "rows", "tokens",
                                                                            "seconds"))
                                        if (data / TRAJECTORIES).is_file() else ())
    numbers: dict = {"complete": True, "stops": stops, "grpo_last": grpo_last, "tests": {}, "secondary": {},
                     "levels": level_numbers}
    lines += [f"## The tests of {part} ({len(base['problems']):,} problems x {choice['seeds']} seeds; {resamples:,} "
              f"resamples; GRPO {choice['grpo_config']} at step {stops['grpo']})", "",
              "| comparison | pass@16 difference [95%] | Holm p (diff.) | Holm p (TOST ±0.03) | avg@64 difference [95%] "
              f"| Holm p (match TOST ±{margin:.4f}) | reading |", "|" + " --- |" * 7]
    for i, m in enumerate(arms):
        d, a = diff[m], match[m]
        reading = ("not at matched accuracy: no breadth claim" if not r_match[i] else
                   {(True, True): "different, within ±0.03", (True, False): "different",
                    (False, True): "equivalent within ±0.03", (False, False): "inconclusive"}[(r_diff[i], r_equiv[i])])
        numbers["tests"][m] = {"pass16": d.estimate, "low": d.low, "high": d.high, "holm_diff": p_diff[i],
                               "holm_equiv": p_equiv[i], "avg64": a.estimate, "avg_low": a.low, "avg_high": a.high,
                               "holm_match": p_match[i], "matched": r_match[i], "reading": reading}
        lines.append(f"| {m}@{stops[m]} − grpo@{stops['grpo']} | {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] | "
                     f"{p_diff[i]:.4f} | {p_equiv[i]:.4f} | {a.estimate:+.4f} [{a.low:+.4f}, {a.high:+.4f}] | "
                     f"{p_match[i]:.4f} | {reading} |")
    lines += ["", "Secondary, exploratory (uncorrected p):", "", "| comparison | score | difference [95%] | p |",
              "| --- | --- | --- | --- |"]
    pairs = [(m, arms[m], "grpo", stops["grpo"], base) for m in arms]
    if grpo_last != stops["grpo"]:
        pairs.append(("popo", arms["popo"], "grpo", grpo_last, found[("grpo", grpo_last)]))
    for m, a, _, step, b in pairs:
        for score in ("pass@64", "greedy") + (("pass@16", "avg@64") if step == grpo_last != stops["grpo"] else ()):
            t = compare(a, b, score, resamples=resamples)
            numbers["secondary"][f"{m} − grpo@{step} {score}"] = {"estimate": t.estimate, "low": t.low,
                                                                 "high": t.high, "p": t.p_difference}
            lines.append(f"| {m}@{stops[m]} − grpo@{step} | {score} | {t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}] "
                         f"| {t.p_difference:.4f} |")
    return lines + ["", *level_lines], numbers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--choice", type=Path, default=HERE / "plateau" / "numbers.json")
    parser.add_argument("--key", default="b", help="the choice's key in --choice's file (c2: finals)")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args(argv)
    choice = json.loads(args.choice.read_text())[args.key]
    part = "b on v4-test" if args.key == "b" else "c2 on the 4-number countdown's test split"
    lines, numbers = tests_b(args.data, choice, resamples=args.resamples, part=part)
    title = ("part b: breadth at matched accuracy (v4-test)" if args.key == "b" else
             "part c2: breadth at matched accuracy (4-number countdown, its test split; addendum 5)")
    shown = "" if args.key == "b" else f" --choice {args.choice.as_posix()} --key {args.key}"
    note = [] if args.key == "b" else [
        "Note (erratum to addendum 5): before the finals, a tool check read test problems test-0 to test-2 (greedy "
        "and 4 samples, from the warm start and one GRPO tuning checkpoint; every score 0). Nothing was chosen from "
        "it; those three problems are among the 1,500 tested here.", ""]
    (args.data / "report.md").write_text("\n".join([f"# Study v4, {title}", "",
                                                    "Made by `python docs/results/study_v4/derive_b.py "
                                                    f"{args.data.as_posix()}{shown}` from the raw tables beside it.",
                                                    "", *note, *lines]))
    (args.data / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True, default=float) + "\n")
    print(json.dumps(numbers.get("tests", {}), indent=1, default=float))


if __name__ == "__main__":
    main()
