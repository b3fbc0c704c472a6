"""Study v3: every number of the report, re-derived from the raw per-seed, per-problem data beside it.

    # 1. raw data from finished study folders (run once after the runs; what is committed)
    python docs/results/study_v3/derive.py collect runs/study-v3/countdown --task countdown \
        --out docs/results/study_v3/countdown
    # 2. the report from the raw data and the pre-registered plan alone
    python docs/results/study_v3/derive.py report docs/results/study_v3/countdown \
        --plan docs/results/study_v3/preregistration.json

`collect` (``collect.py``) writes, or extends (rows of runs it does not see again are kept), ``outcomes.csv.gz``
(method, seed, problem: greedy 0/1, correct of k samples, distinct correct samples; the start model as method
``start``) from each run's ``problems.json`` and ``curves.csv.gz`` (every evaluation of every run: split, step,
greedy accuracy, avg@k, pass@k) from each run's ``metrics.jsonl``.
Several study folders may be given (the tuning folder's validation curves, the final folder's test outcomes).
The outcomes of `docs/results/pass_at_k.py` (k samples per problem on a prefix of the test split, per run and for
the start under each evaluation seed) go to ``exploration.csv.gz``.

`report` writes ``report.md``, ``numbers.json`` (every number of the report) and the figures (``figures.py``) into
the data folder, and the study's ``report.md`` one level up (per task: the control's verdict, the primary test, a
link). The test (`tests/test_study_v3_derive.py`) runs both steps on a small fixture. The statistics are those of
`popo.study.analysis` (two-way bootstrap over seeds and problems, Holm within each family); the plan file fixes
the arms, the baseline, the primary pair, the metric, the margin and the control's criterion before the data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from popo.study.analysis import (CURVE_FIELDS, OUTCOME_FIELDS, curve_area, difference_se, interaction_variance,
                                 minimum_detectable, paired_scores, pass_at, read_rows, score_matrix,
                                 two_way_bootstrap, variance_components, write_rows)
from popo.study.stats import holm, mean_ci
from popo.tracking import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this script's siblings, however it was started
import figures  # noqa: E402
from collect import CURVES, EXPLORATION, OUTCOMES, collect, merged  # noqa: E402


# ------------------------------------------------------------------------------------------------ report

def _fmt(x: float, signed: bool = False) -> str:
    return "n/a" if x != x else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _p(x: float) -> str:
    return "n/a" if x != x else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def arm_table(rows: list[dict], task: str, arms: list[str], k: int) -> tuple[list[str], dict]:
    """Per arm: mean over seeds (95% t interval over seeds) of greedy accuracy, avg@k, pass@k, and distinct
    correct samples per solved problem (pooled)."""
    lines = [f"| arm | seeds | greedy | avg@{k} | pass@{k} | distinct correct / solved |", "|" + " --- |" * 6]
    numbers = {}
    for arm in ["start", *arms]:
        _, _, greedy = score_matrix(rows, task, arm, "greedy")
        _, _, counts = score_matrix(rows, task, arm, "correct")
        _, _, distinct = score_matrix(rows, task, arm, "distinct")
        per_seed = {"greedy": greedy.mean(1), "avg": (counts / k).mean(1), "pass": pass_at(counts, k, k).mean(1)}
        cis = {m: mean_ci(list(v)) for m, v in per_seed.items()}
        solved = counts > 0
        dps = float(distinct[solved].mean()) if solved.any() else float("nan")
        numbers[arm] = {m: {"mean": ci.mean, "low": ci.low, "high": ci.high} for m, ci in cis.items()}
        numbers[arm].update(seeds=int(greedy.shape[0]), distinct_per_solved=dps)
        cells = [f"{_fmt(ci.mean)} [{_fmt(ci.low)}, {_fmt(ci.high)}]" if ci.low == ci.low else _fmt(ci.mean)
                 for ci in cis.values()]
        lines.append(f"| {'*start*' if arm == 'start' else arm} | {greedy.shape[0]} | " + " | ".join(cells) +
                     f" | {dps:.2f} |")
    return lines, numbers


def control(rows: list[dict], task: str, plan: dict) -> tuple[list[str], dict]:
    """The positive control on test: the baseline's change over the start on every metric, and the verdict."""
    base, resamples = plan["baseline"], plan["resamples"]
    tests = {score: two_way_bootstrap(*paired_scores(rows, task, base, "start", score), resamples=resamples)
             for score in ("avg", "greedy")}
    lift, greedy = tests["avg"], tests["greedy"]
    checks = {"lift at least the criterion": lift.estimate >= plan["control"]["min_lift"],
              "lower 95% bound above 0": lift.low > 0,
              "greedy no lower than the start": greedy.estimate >= 0}
    passed = all(checks.values())
    lines = [f"| {base} − start | estimate | 95% interval (seeds x problems) | p |", "| --- | --- | --- | --- |"]
    for name, t in (("avg@k", lift), ("greedy", greedy)):
        lines.append(f"| {name} | {_fmt(t.estimate, True)} | [{_fmt(t.low, True)}, {_fmt(t.high, True)}] | "
                     f"{_p(t.p_difference)} |")
    lines += [""] + [f"- {'passed' if ok else 'FAILED'}: {name}" for name, ok in checks.items()]
    lines.append(f"\n**The positive control {'passed' if passed else 'failed'} on {plan.get('split', 'test')}.**")
    numbers = {"passed": passed, "checks": checks,
               **{name: {"estimate": t.estimate, "low": t.low, "high": t.high, "p": t.p_difference}
                  for name, t in (("avg", lift), ("greedy", greedy))}}
    return lines, numbers


def comparisons(rows: list[dict], task: str, plan: dict) -> tuple[list[str], dict]:
    """Every arm against the baseline on the primary metric: difference tests (one Holm family) and TOST
    against the pre-registered margin (a second Holm family); then the secondary metrics, uncorrected."""
    base, margin, resamples = plan["baseline"], plan["margin"], plan["resamples"]
    arms = [a for a in plan["arms"] if a != base]
    tests = {a: two_way_bootstrap(*paired_scores(rows, task, a, base, plan["metric"]), margin=margin,
                                  resamples=resamples) for a in arms}
    p_diff, reject_diff = holm([tests[a].p_difference for a in arms])
    p_eq, reject_eq = holm([tests[a].p_equivalence for a in arms])
    lines = [f"| arm − {base} | Δ {plan['metric']}@{plan['k']} | 95% interval | p (difference) | Holm p | "
             f"p (TOST ±{margin:.3f}) | Holm p | reading |", "|" + " --- |" * 8]
    numbers = {}
    for i, a in enumerate(arms):
        t = tests[a]
        reading = ("differs" if reject_diff[i] else "equivalent within the margin" if reject_eq[i]
                   else "inconclusive")
        primary = " (primary)" if a == plan["primary"][0] else ""
        lines.append(f"| {a}{primary} | {_fmt(t.estimate, True)} | [{_fmt(t.low, True)}, {_fmt(t.high, True)}] | "
                     f"{_p(t.p_difference)} | {_p(p_diff[i])} | {_p(t.p_equivalence)} | {_p(p_eq[i])} | {reading} |")
        numbers[a] = {"estimate": t.estimate, "low": t.low, "high": t.high, "p_difference": t.p_difference,
                      "holm_difference": p_diff[i], "p_equivalence": t.p_equivalence, "holm_equivalence": p_eq[i],
                      "reading": reading}
    lines += ["", f"Secondary metrics (uncorrected, exploratory): arm − {base}.", "",
              "| arm | Δ greedy | 95% interval | p | Δ pass@k | 95% interval | p |", "|" + " --- |" * 7]
    for a in arms:
        cells = []
        for score in ("greedy", "pass"):
            x, y = _scores_for(rows, task, a, base, score, plan["k"])
            t = two_way_bootstrap(x, y, resamples=resamples)
            cells.append(f"{_fmt(t.estimate, True)} | [{_fmt(t.low, True)}, {_fmt(t.high, True)}] | {_p(t.p_difference)}")
            numbers[a][f"{score}_estimate"] = t.estimate
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines, numbers


def _scores_for(rows, task, a, b, score, k):
    if score != "pass":
        return paired_scores(rows, task, a, b, score)
    x, y = paired_scores(rows, task, a, b, "correct")
    return pass_at(x, k, k), pass_at(y, k, k)


def exploration(rows: list[dict], task: str, arms: list[str], k: int) -> tuple[list[str], dict]:
    js = [j for j in (1, 2, 4, 8, 16, 32, 64, 128, 256) if j <= k]
    lines = ["| arm | " + " | ".join(f"pass@{j}" for j in js) + " |", "|" + " --- |" * (1 + len(js))]
    numbers = {}
    for arm in ["start", *arms]:
        _, _, counts = score_matrix(rows, task, arm, "correct")
        curve = [float(pass_at(counts, k, j).mean()) for j in js]
        numbers[arm] = dict(zip(map(str, js), curve))
        lines.append(f"| {'*start*' if arm == 'start' else arm} | " + " | ".join(_fmt(v) for v in curve) + " |")
    return lines, numbers


def _rate(variant: str) -> float:
    """The learning rate in a variant's name ("grpo lr=1e-4" -> 1e-4), for ordering rows; inf without one."""
    for part in variant.split()[1:]:
        if part.startswith("lr="):
            return float(part[3:])
    return float("inf")


def validation_curves(curves: list[dict], task: str, arms: list[str]) -> tuple[list[str], dict]:
    """Per arm and learning rate, the area under the validation avg@k curve (mean level over the steps,
    mean over seeds) and the final value: how the budget and the rates were chosen."""
    rows = [c for c in curves if c["task"] == task and c["split"] == "validation" and c["avg"] != ""]
    variants = sorted({c["method"] for c in rows if c["method"].split()[0] in arms},
                      key=lambda v: (arms.index(v.split()[0]), _rate(v)))  # by arm, then by the rate
    lines = ["| variant | seeds | final avg@k | area (mean level) |", "| --- | --- | --- | --- |"]
    numbers = {}
    for v in variants:
        seeds = sorted({c["seed"] for c in rows if c["method"] == v})
        finals, areas = [], []
        for s in seeds:
            points = sorted((c["step"], c["avg"]) for c in rows if c["method"] == v and c["seed"] == s)
            finals.append(points[-1][1])
            areas.append(curve_area([p[0] for p in points], [p[1] for p in points]))
        numbers[v] = {"final": float(np.mean(finals)), "area": float(np.mean(areas)), "seeds": len(seeds)}
        lines.append(f"| {v} | {len(seeds)} | {_fmt(numbers[v]['final'])} | {_fmt(numbers[v]['area'])} |")
    return lines, numbers


def control_search(root: Path, out: Path) -> list[str]:
    """The control search's validation curves: every run folder under `root` (finished or not), its avg@16 at
    each evaluation, and its final greedy accuracy, avg@16 and pass@16; the curves are also written raw
    (``curves.csv.gz`` in `out`). Runs already in `out` (its table and raw curves) that `root` does not hold
    are kept: a later stage can run on a machine that no longer has the earlier stages' folders."""
    curves, lines = [], []
    for metrics in sorted(root.rglob("metrics.jsonl")):
        run = metrics.parent
        name = run.relative_to(root).as_posix()
        evals = [r for r in read_metrics(metrics) if "eval/greedy_acc" in r]
        if not evals:
            continue
        k = next(int(key.split("@")[1]) for key in evals[0] if key.startswith("eval/avg@"))
        for r in evals:
            curves.append({"task": "countdown", "split": "validation", "method": name, "seed": 0, "step": r["step"],
                           "greedy_acc": r["eval/greedy_acc"], "avg": r[f"eval/avg@{k}"], "pass": r[f"eval/pass@{k}"],
                           "k": k})
        last = evals[-1]
        planned = yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"]
        reached = read_metrics(metrics)[-1]["step"]
        state = "finished" if reached >= planned else f"stopped at step {reached} of {planned}"
        lines.append(f"| {name} | {state} | " + " ".join(f"{r[f'eval/avg@{k}']:.3f}" for r in evals) +
                     f" | {last['step']} | {last['eval/greedy_acc']:.3f} | {last[f'eval/avg@{k}']:.3f} | "
                     f"{last[f'eval/pass@{k}']:.3f} |")
    out.mkdir(parents=True, exist_ok=True)
    rows = merged(out / CURVES, CURVE_FIELDS, curves, ("method",))
    write_rows(out / CURVES, CURVE_FIELDS, rows)
    k = rows[0]["k"] if rows else "k"
    header = [f"| run | state | avg@{k} at steps 0, 50, 100, ... | final step | greedy | avg@{k} | pass@{k} |",
              "|" + " --- |" * 7]
    table = out / "control_search.md"
    seen = {line.split(" | ")[0] for line in lines}
    kept = [line for line in (table.read_text().splitlines() if table.is_file() else [])[2:]
            if line.startswith("| ") and line.split(" | ")[0] not in seen]
    return header + sorted(kept + lines, key=lambda line: Path(line.split(" | ")[0][2:]).parts)  # as rglob sorts


def power(tuning: Path, plan: dict) -> tuple[list[str], dict]:
    """Seeds and test problems for the final runs, sized from the tuning runs on validation: the variance
    components of the baseline at its chosen rate, the arm x problem interaction between the primary arm and
    the baseline, and the baseline's validated gain over the start (`popo.study.analysis`)."""
    rows = read_rows(tuning / OUTCOMES, OUTCOME_FIELDS)
    chosen = json.loads((tuning / "tuning.json").read_text())
    label = chosen["key"].rsplit(".", 1)[-1]
    name = {arm: f"{arm} {label}={chosen[arm]['chosen']}" for arm in plan["arms"] if arm in chosen}
    task = plan["task"]
    _, _, base = score_matrix(rows, task, name[plan["baseline"]], plan["metric"])
    _, _, primary = score_matrix(rows, task, name[plan["primary"][0]], plan["metric"])
    _, _, start = score_matrix(rows, task, "start", plan["metric"])
    components = variance_components(base)
    interaction = interaction_variance(primary, base)
    gain = float(base.mean() - start.mean())
    target = gain / 2
    control_lines, control_numbers = control(rows, task, {**plan, "baseline": name[plan["baseline"]], "split": "validation"})
    lines = ["Positive control on validation (the tuning seeds of the baseline at its chosen rate against the "
             "start):", "", *control_lines, "", f"Baseline {name[plan['baseline']]} on validation ({base.shape[0]} seeds x {base.shape[1]} problems): "
             f"gain over the start {gain:+.4f}; seed variance {components.seed:.2e}, residual variance "
             f"{components.residual:.2e}; interaction variance with {name[plan['primary'][0]]} {interaction:.2e}.",
             "", "| seeds per arm | test problems | SE of a difference | minimum detectable (80% power, 5%) | "
             "at most half the gain |", "| --- | --- | --- | --- | --- |"]
    grid = {}
    for seeds in plan["power"]["seeds"]:
        for problems in plan["power"]["problems"]:
            se = difference_se(components, interaction, seeds, problems)
            mde = minimum_detectable(se)
            grid[f"{seeds}x{problems}"] = {"se": se, "mde": mde, "enough": mde <= target}
            lines.append(f"| {seeds} | {problems} | {se:.4f} | {mde:.4f} | {'yes' if mde <= target else 'no'} |")
    enough = [k for k, v in grid.items() if v["enough"]]
    numbers = {"control": control_numbers, "gain": gain, "target": target, "margin": plan["margin_share"] * gain,
               "seed_variance": components.seed,
               "residual_variance": components.residual, "interaction_variance": interaction, "grid": grid,
               "smallest_enough": enough[0] if enough else None}
    lines += ["", f"Equivalence margin ({plan['margin_share']:.0%} of the gain): ±{numbers['margin']:.4f}. "
              f"Smallest design in the grid that detects half the gain: {numbers['smallest_enough'] or 'none'}."]
    return lines, numbers


def report(folder: Path, plan: dict) -> dict:
    rows = read_rows(folder / OUTCOMES, OUTCOME_FIELDS)
    tuning_curves = folder / "tuning" / CURVES
    curves = read_rows(tuning_curves, CURVE_FIELDS) if tuning_curves.is_file() else []
    task, k = plan["task"], plan["k"]
    numbers: dict = {"plan": plan}
    present = {r["method"] for r in rows if r["task"] == task}
    missing = [a for a in plan["arms"] if a not in present]
    if plan["baseline"] in missing:
        raise SystemExit(f"{folder}: no outcomes of the baseline {plan['baseline']!r} yet: nothing to report")
    if missing:  # an interim report: the arms run so far, every family over them alone
        plan = {**plan, "arms": [a for a in plan["arms"] if a not in missing]}
        numbers["missing_arms"] = missing
    sections = [f"# Study v3 ({task}): report{' (interim)' if missing else ''}\n",
                f"Made by `python docs/results/study_v3/derive.py report {folder.as_posix()} --plan ...` from "
                f"`{OUTCOMES}` and `{CURVES}` in this folder alone. Intervals resample seeds and problems together "
                f"({plan['resamples']} resamples); Holm is applied within the family of difference tests and, "
                "separately, within the family of equivalence tests.\n"]
    if missing:
        sections.append(f"**Interim: {', '.join(missing)} not run yet.** Every table covers the arms run so far, "
                        "and Holm's corrections are over them alone: the corrected p-values of the final report, "
                        "over every pre-registered arm, will be larger or equal.\n")
    lines, numbers["control"] = control(rows, task, plan)
    sections += ["## Positive control (test split)\n", *lines, ""]
    table, numbers["arms"] = arm_table(rows, task, plan["arms"], k)
    sections += ["## Every arm on the test split\n", "Means over seeds with 95% t intervals over seeds.\n", *table, ""]
    if numbers["control"]["passed"]:
        lines, numbers["comparisons"] = comparisons(rows, task, plan)
        sections += [f"## Comparisons against {plan['baseline']} (primary: {' − '.join(plan['primary'])}, "
                     f"{plan['metric']}@{k})\n", *lines, ""]
    else:
        sections += ["## Comparisons\n", "None: the positive control failed, so no method comparison is reported.\n"]
    lines, numbers["exploration"] = exploration(rows, task, plan["arms"], k)
    sections += [f"## Exploration: unbiased pass@j from the {k} samples per problem\n", *lines, ""]
    if (folder / EXPLORATION).is_file():  # pass@k up to 256 on a prefix of the test split (exploratory)
        deep = read_rows(folder / EXPLORATION, OUTCOME_FIELDS)
        big = int(deep[0]["k"])
        arms = [a for a in plan["arms"] if any(r["method"] == a for r in deep)]
        lines, numbers["exploration_deep"] = exploration(deep, task, arms, big)
        problems = len({r["problem"] for r in deep})
        sections += [f"## Exploration: pass@j up to {big} on the first {problems} test problems (exploratory)\n",
                     *lines, ""]
    if curves:
        lines, numbers["validation"] = validation_curves(curves, task, plan["arms"])
        sections += ["## Validation curves (tuning phase)\n", *lines, ""]
    tuning = folder / "tuning" / "tuning.json"
    figures_md = figures.draw(folder, numbers, plan, curves, json.loads(tuning.read_text()) if tuning.is_file() else None)
    sections += ["## Figures\n", *[f"{line}\n" for line in figures_md]]
    (folder / "report.md").write_text("\n".join(sections))
    (folder / "numbers.json").write_text(json.dumps(numbers, indent=1, default=_plain) + "\n")
    return numbers


def study_index(root: Path) -> list[str]:
    """The study's ``report.md``: per task folder with a report, the control's verdict and the primary test, each
    read from that folder's ``numbers.json``, with a link to the task's full report."""
    lines = ["# Study v3: report\n", "Pre-registration: [preregistration.md](preregistration.md). Per task, the full "
             "report, its figures and its raw data sit in the task's folder; `derive.py report <folder>` rewrites "
             "both that report and this page.\n"]
    for numbers_file in sorted(root.glob("*/numbers.json")):
        numbers, task = json.loads(numbers_file.read_text()), numbers_file.parent.name
        plan, control = numbers["plan"], numbers["control"]
        interim = f" (interim: {', '.join(numbers['missing_arms'])} not run yet)" if numbers.get("missing_arms") else ""
        lines += [f"## {task}{interim}\n", f"Full report: [{task}/report.md]({task}/report.md).\n",
                  f"- Positive control on test ({plan['baseline']} − start, {plan['metric']}@{plan['k']}): "
                  f"{_fmt(control['avg']['estimate'], True)} [{_fmt(control['avg']['low'], True)}, "
                  f"{_fmt(control['avg']['high'], True)}]: **{'passed' if control['passed'] else 'failed'}**."]
        primary = numbers.get("comparisons", {}).get(plan["primary"][0])
        if primary is None:
            lines.append("- No method comparison: the control failed.")
        else:
            lines.append(f"- Primary test ({' − '.join(plan['primary'])}, {plan['metric']}@{plan['k']}): "
                         f"{_fmt(primary['estimate'], True)} [{_fmt(primary['low'], True)}, "
                         f"{_fmt(primary['high'], True)}], Holm p {_p(primary['holm_difference'])}; TOST at "
                         f"±{plan['margin']:.3f}, Holm p {_p(primary['holm_equivalence'])}: {primary['reading']}.")
        lines.append("")
    return lines


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="raw tables from finished study folders")
    c.add_argument("studies", nargs="+", type=Path)
    c.add_argument("--task", required=True)
    c.add_argument("--out", required=True, type=Path)
    cs = sub.add_parser("control", help="the control search's validation curves (table and raw curves)")
    cs.add_argument("root", type=Path)
    cs.add_argument("--out", required=True, type=Path)
    w = sub.add_parser("power", help="seeds and test problems for the final runs, from the tuning runs' raw tables")
    w.add_argument("folder", type=Path, help="the tuning data folder (outcomes.csv.gz, tuning.json)")
    w.add_argument("--plan", required=True, type=Path)
    r = sub.add_parser("report", help="report.md and numbers.json from the raw tables")
    r.add_argument("folder", type=Path)
    r.add_argument("--plan", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "collect":
        n, m = collect(args.studies, args.task, args.out)
        print(f"{args.out}: {n} outcome rows, {m} curve rows")
    elif args.command == "control":
        lines = control_search(args.root, args.out)
        (args.out / "control_search.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    elif args.command == "power":
        lines, numbers = power(args.folder, json.loads(args.plan.read_text()))
        (args.folder / "power.md").write_text("\n".join(lines) + "\n")
        (args.folder / "power.json").write_text(json.dumps(numbers, indent=1) + "\n")
        print("\n".join(lines))
    else:
        plan = json.loads(args.plan.read_text())
        numbers = report(args.folder, plan[args.folder.name] if args.folder.name in plan else plan)
        (args.folder.parent / "report.md").write_text("\n".join(study_index(args.folder.parent)))
        print(f"{args.folder / 'report.md'}: control {'passed' if numbers['control']['passed'] else 'failed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
