"""Study v4, part c (4-number countdown), re-derived from its committed raw tables alone.

    python docs/results/study_v4/derive_c.py phase0 docs/results/study_v4/task_c/phase0   # last line: the budget
    python docs/results/study_v4/derive_c.py tuning docs/results/study_v4/task_c/tuning   # last line: what is next
    python docs/results/study_v4/derive_c.py finals-plan docs/results/study_v4/task_c/c2   # c2's final runs
    python docs/results/study_v4/derive_c.py components docs/results/study_v4/task_c/c2/components   # part d

`phase0` (exploratory, one seed): GRPO's trajectory at each probe rate, the best rate (highest final validation
avg@16) and its rise L(last) − L(last − 300) (L as in part a), and the step budget of c's tuning and finals: 500
steps, or 1,000 when the best rate still rises by at least 0.005 over those 300 steps (the pre-registration's c,
phase 0; addendum 2).

`tuning`: each arm's seed-mean final avg@16 and pass@16 per rate, its choice (the highest mean final avg@16; an
edge choice names the rate that extends the grid), GRPO's positive control (addendum 2: its tuned rate's final
avg@16 minus the same runs' step-0 avg@16, paired by seed and problem, passes when the estimate is at least
max(0.5 x the start's avg@16, 0.05) and the lower 95% bound is above 0), and once POPO or RAFT have their tuned
runs, the frontier and their matched comparisons against GRPO over all its rates and steps (part a's
`along_steps`); once every arm is tuned, c2's final runs by b's rule (addendum 5: `finals_choice`, in
numbers.json as "finals"). Its last line says what runs next: ``extend ARM RATE``, ``control-failed``, ``arms ARMS`` (the
arms whose tuning runs are still missing) or ``tuned``.

`components` (part d, exploratory: no test, no correction): POPO at its tuned rate with one of α, T_w or τ moved
from its default (the default's runs are POPO's tuning runs at that rate): each setting's final avg@16 and
pass@16, the mean spread of its credit weights (`weight_dev_uniform` over the logged steps), and its pass@16 at
the default's avg@16 and avg@16 at the default's rows, both matched along the default's trajectory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from popo.study.analysis import load_script, read_rows, two_way_bootstrap
from popo.study.frontier import Trajectories, from_tables, matched_compute, matched_pass, mean_curve
from popo.study.frontier_report import draw_frontier, frontier_lines


_derive = load_script(Path(__file__).resolve().parent / "derive.py", "study_v4_derive")
_collect = _derive._collect
TRAJECTORY_FIELDS, TRAJECTORIES = _collect.TRAJECTORY_FIELDS, _collect.TRAJECTORIES
OUTCOME_FIELDS, OUTCOMES = _collect.OUTCOME_FIELDS, _collect.OUTCOMES

SHORT, LONG = 500, 1000  # phase 0's budget rule
GRID = ("lr=1e-5", "lr=3e-5", "lr=1e-4", "lr=3e-4")  # c's tuning grid; an edge choice extends it by 3x
EXTEND = {"lr=1e-5": "lr=3e-6", "lr=3e-4": "lr=1e-3"}
ARMS, SEEDS, FLOOR = ("grpo", "popo", "raft"), 3, 0.05  # tuning arms, tuning seeds, the control's absolute floor
MATCH_SHARE, FIRST_STEP = 0.25, 100  # c2's finals (addendum 5): the match margin's share of GRPO's lift; s_G >= 100
FINAL_GRPO = ("lr=1e-5", "lr=3e-5", "lr=1e-4")  # the GRPO configurations c2's match searches (3e-4 collapsed)


def _sets(data: Path) -> list[Trajectories]:
    return from_tables(read_rows(data / TRAJECTORIES, TRAJECTORY_FIELDS), read_rows(data / OUTCOMES, OUTCOME_FIELDS))


def _rate(config: str) -> float:
    return float(config.split("=")[1])


def phase0(data: Path) -> int:
    """report.md in `data` and the step budget (500 or 1,000)."""
    rows = read_rows(data / TRAJECTORIES, TRAJECTORY_FIELDS)
    table = ["| rate | step | greedy | avg@16 | pass@16 | KL to the start (per token) |", "|" + " --- |" * 6]
    for r in sorted(rows, key=lambda r: (_rate(r["config"]), int(r["step"]))):
        kl = r.get("start_kl", float("nan"))
        table.append(f"| {r['config']} | {r['step']} | {r['greedy_acc']:.3f} | {r['avg']:.4f} | {r['pass']:.3f} | "
                     + ("-" if kl != kl else f"{kl:.3f}") + " |")
    sets = _sets(data)
    best = max(sets, key=lambda t: mean_curve(t, t.k)[0][-1])
    level = _derive.levels(best.steps, mean_curve(best, best.k)[0])
    last = int(best.steps[-1])
    rise = level[last] - level[last - _derive.WINDOW]
    budget = LONG if rise >= _derive.RISE else SHORT
    (data / "report.md").write_text("\n".join([
        "# Study v4, part c, phase 0: GRPO's probe (validation, one seed, exploratory)", "",
        "Made by `python docs/results/study_v4/derive_c.py phase0 docs/results/study_v4/task_c/phase0` from the raw "
        "tables beside it: GRPO on the 800-step warm start of 4-number countdown, 500 steps of 16 x 8, evaluated on "
        "the 500 validation problems (greedy and 16 samples) every 100 steps.", "", *table, "",
        f"Best rate: {best.config} (final avg@16 {mean_curve(best, best.k)[0][-1]:.4f}); L({last}) − "
        f"L({last - _derive.WINDOW}) = {rise:+.4f} (L: the mean of the evaluations at s − 200, s − 100 and s). "
        f"**Budget of c's tuning and finals: {budget:,} steps** ({'still rising by' if budget == LONG else 'below'} "
        f"{_derive.RISE} over 300 steps).", ""]))
    return budget


def choices(sets: list[Trajectories]) -> tuple[list[str], dict]:
    """Each arm's rate table and choice over the configurations with all tuning seeds."""
    lines = ["| method | rate | seeds | final step | final avg@16 | final pass@16 |", "|" + " --- |" * 6]
    chosen: dict = {}
    for arm in ARMS:
        mine = sorted((t for t in sets if t.method == arm), key=lambda t: _rate(t.config))
        for t in mine:
            avg, breadth = mean_curve(t, t.k)
            lines.append(f"| {arm} | {t.config} | {len(t.seeds)} | {int(t.steps[-1])} | {avg[-1]:.4f} | "
                         f"{breadth[-1]:.3f} |")
        full = [t for t in mine if len(t.seeds) >= SEEDS]
        if {t.config for t in full} >= set(GRID):
            top = max(full, key=lambda t: mean_curve(t, t.k)[0][-1])
            edge = EXTEND.get(top.config)
            edge = edge if edge not in {t.config for t in full} else None  # an extended grid's new edge stops there
            chosen[arm] = {"config": top.config, "avg": float(mean_curve(top, top.k)[0][-1]),
                           "pass": float(mean_curve(top, top.k)[1][-1]), "extend": edge}
    return lines, chosen


def control(t: Trajectories, *, resamples: int = 10_000) -> dict:
    """GRPO's positive control at its tuned configuration (addendum 2)."""
    start = t.correct[:, t.index(0)] / t.k
    test = two_way_bootstrap(t.correct[:, t.index(None)] / t.k, start, resamples=resamples)
    threshold = max(0.5 * float(start.mean()), FLOOR)
    return {"config": t.config, "start": float(start.mean()), "threshold": threshold, "lift": test.estimate,
            "low": test.low, "high": test.high, "passed": bool(test.estimate >= threshold and test.low > 0)}


def finals_choice(sets: list[Trajectories], chosen: dict, control: dict) -> tuple[list[str], dict]:
    """c2's final runs (addendum 5): b's rule (`derive.choose_b`) with each arm's tuned rate, GRPO matched over
    FINAL_GRPO at steps from FIRST_STEP on, and the match margin MATCH_SHARE of GRPO's validated lift (v3's rule
    for its margin, 25% of g, on this task)."""
    margin = round(MATCH_SHARE * control["lift"], 5)
    return _derive.choose_b(sets, _derive.v3_seed_upper(), configs={arm: chosen[arm]["config"] for arm in ARMS},
                            grpo_configs=FINAL_GRPO, margin=margin, first_step=FIRST_STEP,
                            title="c2's final runs (validation; addendum 5: b's rule with c2's rates and a margin of "
                                  f"{MATCH_SHARE:.0%} of GRPO's lift, ±{margin})")


def tuning(data: Path, *, resamples: int = 10_000) -> str:
    sets = _sets(data)
    table, chosen = choices(sets)
    text = ["# Study v4, part c: tuning (validation)", "",
            f"Made by `python docs/results/study_v4/derive_c.py tuning {data.as_posix()}` from the raw "
            "tables beside it. Seed means at the last evaluation; the choice maximises the mean final avg@16 "
            "(pre-registration, c; addendum 2).", "", *table, ""]
    numbers: dict = {"choices": chosen}
    for arm, c in chosen.items():
        text.append(f"- {arm}: **{c['config']}** (avg@16 {c['avg']:.4f}, pass@16 {c['pass']:.3f})"
                    + (f"; an edge of the grid: {c['extend']} runs next" if c["extend"] else "") + ".")
    nxt = "arms grpo"
    grpo = chosen.get("grpo")
    if grpo and grpo["extend"]:
        nxt = f"extend grpo {grpo['extend']}"
    elif grpo:
        ctl = control(next(t for t in sets if t.method == "grpo" and t.config == grpo["config"]), resamples=resamples)
        numbers["control"] = ctl
        text += ["", f"**Positive control** (GRPO {ctl['config']}, final minus step 0, paired by seed and problem, "
                 f"{resamples:,} resamples): avg@16 {ctl['start']:.4f} → lift {ctl['lift']:+.4f} [{ctl['low']:+.4f}, "
                 f"{ctl['high']:+.4f}] against the threshold {ctl['threshold']:.3f}: "
                 + ("**passed**." if ctl["passed"] else "**failed: c stops here** (pre-registration, c).")]
        missing = [arm for arm in ARMS[1:] if arm not in chosen]
        extend = [f"{arm} {c['extend']}" for arm, c in chosen.items() if c["extend"]]
        nxt = ("control-failed" if not ctl["passed"] else f"extend {extend[0]}" if extend
               else f"arms {','.join(missing)}" if missing else "tuned")
    if grpo and len(chosen) > 1 and "control" in numbers and numbers["control"]["passed"]:
        configs = {arm: c["config"] for arm, c in chosen.items() if arm != "grpo" and not c["extend"]}
        lines, along = _derive.along_steps(sets, configs=configs, base=grpo["config"])
        numbers["along"] = along
        text += ["", *lines]
    if nxt == "tuned":  # addendum 5: c2's final runs, chosen from these tables by b's rule
        lines, numbers["finals"] = finals_choice(sets, chosen, numbers["control"])
        text += ["", *lines]
    figure = draw_frontier(sets, data / "frontier.png")
    if figure is not None:
        text += ["", "![frontier](frontier.png)"]
    text += ["", *frontier_lines(sets, "grpo", resamples=1000), "", f"Next: `{nxt}`.", ""]
    (data / "report.md").write_text("\n".join(text))
    (data / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True,
                                                  default=lambda x: None if x != x else float(x)) + "\n")
    return nxt


DEFAULTS = {"alpha": 0.1, "weight_temperature": 1.0, "tau": 0.995}  # POPO's defaults (popo.algo_config)


def setting_label(rate: str, setting: str = "") -> str:
    """The configuration label that `collect.py --label algo.alpha,algo.weight_temperature,algo.tau` gives POPO at
    `rate` (``lr=3e-5``) with `setting` (``algo.alpha=0``; empty: the default) moved from its default."""
    values = dict(DEFAULTS)
    if setting:
        key, value = setting.split("=")
        values[key.split(".", 1)[1]] = float(value)
    return " ".join([rate, *(f"{k}={v:g}" for k, v in values.items())])


def default_label(rate: str) -> str:
    return setting_label(rate)


def components(data: Path, tuning: Path, *, resamples: int = 1000) -> dict:
    """Part d's table (report.md, numbers.json in `data`) against POPO's default at its tuned rate."""
    rate = json.loads((tuning / "numbers.json").read_text())["choices"]["popo"]["config"]
    default = next(t for t in _sets(tuning) if t.method == "popo" and t.config == rate)
    default = Trajectories("popo", default_label(rate), default.seeds, default.steps, default.correct, default.k,
                           default.compute)
    rows = read_rows(data / TRAJECTORIES, TRAJECTORY_FIELDS)  # weight_dev: a later column (nan or absent: none)
    tuned_rows = read_rows(tuning / TRAJECTORIES, TRAJECTORY_FIELDS)
    rows += [dict(r, config=default.config) for r in tuned_rows if r["method"] == "popo" and r["config"] == rate]
    sets = [t for t in _sets(data) if t.method == "popo" and t.config != default.config] + [default]
    lines = ["| setting | seeds | final avg@16 | final pass@16 | weight spread (mean) | pass@16 − default's at that "
             "avg@16 [95%] | avg@16 − default's at equal rows [95%] |", "|" + " --- |" * 7]
    numbers: dict = {"rate": rate}
    for t in sorted(sets, key=lambda t: t.config):
        avg, breadth = mean_curve(t, t.k)
        spread = [r["weight_dev"] for r in rows if r["config"] == t.config and r.get("weight_dev") == r.get("weight_dev")
                  and isinstance(r.get("weight_dev"), float)]
        row = {"seeds": len(t.seeds), "avg": float(avg[-1]), "pass": float(breadth[-1]),
               "weight_dev": float(sum(spread) / len(spread)) if spread else float("nan")}
        shown = ["-", "-"]
        if t is not default:
            m = matched_pass(t, [default], j=t.k, resamples=resamples)
            c = matched_compute(t, default, resamples=resamples)
            row |= {"matched_pass": m.estimate, "pass_low": m.low, "pass_high": m.high, "matched_rows": c.estimate,
                    "rows_low": c.low, "rows_high": c.high}
            shown = ["-" if m.estimate != m.estimate else f"{m.estimate:+.3f} [{m.low:+.3f}, {m.high:+.3f}]",
                     f"{c.estimate:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"]
        numbers[t.config] = row
        lines.append(f"| {t.config}{' (default)' if t is default else ''} | {len(t.seeds)} | {avg[-1]:.4f} | "
                     f"{breadth[-1]:.3f} | {row['weight_dev']:.4f} | {shown[0]} | {shown[1]} |")
    figure = draw_frontier(sets, data / "frontier.png")
    (data / "report.md").write_text("\n".join([
        "# Study v4, part d: do POPO's components act? (validation, exploratory)", "",
        f"Made by `python docs/results/study_v4/derive_c.py components {data.as_posix()}` from "
        "the raw tables beside it and POPO's tuning runs (its default). One setting moved at a time from α = 0.1, "
        f"T_w = 1, τ = 0.995, POPO at {rate}; seed means at the last evaluation; intervals: two-way bootstrap over "
        f"seeds and problems, {resamples:,} resamples, no correction (exploratory, as pre-registered).", "", *lines,
        "", *(["![frontier](frontier.png)", ""] if figure is not None else [])]))
    (data / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True,
                                                  default=lambda x: None if x != x else float(x)) + "\n")
    return numbers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("phase0").add_argument("data", type=Path)
    t = sub.add_parser("tuning")
    t.add_argument("data", type=Path)
    t.add_argument("--resamples", type=int, default=10_000)
    lab = sub.add_parser("label", help="part d: a run's configuration label (RATE SETTING)")
    lab.add_argument("rate")
    lab.add_argument("setting", nargs="?", default="")
    f = sub.add_parser("finals-plan", help="c2's final runs, one line per arm (ARM CONFIG STEPS EVAL_STEPS SEEDS)")
    f.add_argument("data", type=Path)
    d = sub.add_parser("components")
    d.add_argument("data", type=Path)
    d.add_argument("--tuning", type=Path, default=None,
                   help="the tuning tables holding POPO's default (default: the folder above DATA)")
    args = parser.parse_args(argv)
    if args.command == "phase0":
        print(phase0(args.data))
    elif args.command == "finals-plan":
        print("\n".join(_derive.finals_plan(json.loads((args.data / "numbers.json").read_text()), "finals")))
    elif args.command == "label":
        print(setting_label(args.rate, args.setting))
    elif args.command == "components":
        print(json.dumps(components(args.data, args.tuning or args.data.parent), indent=1, default=float))
    else:
        print(tuning(args.data, resamples=args.resamples) if (args.data / TRAJECTORIES).exists() else "arms grpo")


if __name__ == "__main__":
    main()
