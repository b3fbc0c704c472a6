"""Study v4's numbers, re-derived from its committed raw tables alone.

    python docs/results/study_v4/derive.py plateau docs/results/study_v4/plateau   # report.md, numbers.json, frontier.png
    python docs/results/study_v4/derive.py warmups docs/results/study_v4/task_c/warmups   # c's phase 0: the warm-up
    python docs/results/study_v4/derive.py finals-plan docs/results/study_v4/plateau   # b's final runs, per arm

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

from popo.study.analysis import (Components, difference_se, interaction_variance, load_script, minimum_detectable,
                                 pass_at, read_rows, two_way_bootstrap, variance_components)
from popo.study.stats import holm
from popo.study.frontier import Trajectories, from_tables, matched_compute, matched_pass, mean_curve
from popo.study.frontier_report import draw_frontier, frontier_lines


_collect = load_script(Path(__file__).resolve().parent / "collect.py", "study_v4_collect")  # v3 has a collect.py too
OUTCOME_FIELDS, OUTCOMES = _collect.OUTCOME_FIELDS, _collect.OUTCOMES
TRAJECTORY_FIELDS, TRAJECTORIES = _collect.TRAJECTORY_FIELDS, _collect.TRAJECTORIES

SEEDS, RISE, WINDOW, MARGIN = 3, 0.005, 300, 0.028812  # the pre-registration's plateau rule and v3's margin
CONFIG = "lr=1e-4"  # v3's rate: a's tests compare the arms there
TIE, TEST_PROBLEMS, SEED_OPTIONS = 0.005, 1500, (10, 15, 20)  # b's choice rule and power rule
GRPO_CONFIGS = ("lr=1e-5", "lr=3e-5", "lr=1e-4")  # addendum 1: b's matched GRPO is chosen over these


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


def tests_a(sets: list[Trajectories], *, resamples: int = 10_000) -> tuple[list[str], dict]:
    """The pre-registered tests of a at v3's rate: POPO − GRPO and RAFT − GRPO in validation avg@16 at the last
    step (each seed paired by index, problems by id; two-way bootstrap), Holm over the two differences and,
    separately, over the two TOSTs at ±MARGIN; and each arm's compute to reach GRPO's L(last) − MARGIN."""
    by = {t.method: t for t in sets if t.config == CONFIG}
    base = by["grpo"]
    last = int(base.steps[-1])
    target = levels(base.steps, mean_curve(base, base.k)[0])[last] - MARGIN
    tests = {arm: two_way_bootstrap(by[arm].correct[:, by[arm].index(last)] / by[arm].k,
                                    base.correct[:, base.index(last)] / base.k, margin=MARGIN, resamples=resamples)
             for arm in ("popo", "raft")}
    p_diff, reject_diff = holm([t.p_difference for t in tests.values()])
    p_equiv, reject_equiv = holm([t.p_equivalence for t in tests.values()])
    lines = [f"## The tests of a (validation, step {last}, {CONFIG}; {resamples:,} resamples)", "",
             "| comparison | avg@16 difference [95%] | p (diff.) | Holm p | TOST p (±0.0288) | Holm p | verdict |",
             "|" + " --- |" * 7]
    numbers: dict = {"step": last, "target": target, "tests": {}, "reach": {}}
    for i, (arm, t) in enumerate(tests.items()):
        verdict = {(True, True): "different, within the margin", (True, False): "different",
                   (False, True): "equivalent", (False, False): "inconclusive"}[(reject_diff[i], reject_equiv[i])]
        lines.append(f"| {arm} − grpo | {t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}] | {t.p_difference:.4f} | "
                     f"{p_diff[i]:.4f} | {t.p_equivalence:.4f} | {p_equiv[i]:.4f} | {verdict} |")
        numbers["tests"][arm] = {"estimate": t.estimate, "low": t.low, "high": t.high, "p_diff": t.p_difference,
                                 "holm_diff": p_diff[i], "p_equiv": t.p_equivalence, "holm_equiv": p_equiv[i],
                                 "verdict": verdict}
    lines += ["", f"Compute to reach GRPO's L({last}) − 0.0288 = {target:.4f} in seed-mean validation avg@16 (rows "
              "and tokens through forward+backward, seed means, at the first evaluation at or above it):", ""]
    for t in sets:
        avg = mean_curve(t, t.k)[0]
        hit = np.flatnonzero(avg >= target)
        if len(hit):
            e = int(hit[0])
            rows, tokens = float(t.compute["rows"][:, e].mean()), float(t.compute["tokens"][:, e].mean())
            numbers["reach"][t.label] = {"step": int(t.steps[e]), "rows": rows, "tokens": tokens}
            lines.append(f"- {t.label}: step {int(t.steps[e])}, {rows:,.0f} rows, {tokens:,.0f} tokens")
        else:
            numbers["reach"][t.label] = None
            lines.append(f"- {t.label}: not within {int(t.steps[-1])} steps")
    return lines + [""], numbers


def along_steps(sets: list[Trajectories], *, configs: dict[str, str] | None = None, base: str = CONFIG,
                resamples: int = 1000) -> tuple[list[str], dict]:
    """POPO's and RAFT's matched comparisons against GRPO at every evaluation step of theirs (the
    pre-registration's "at every evaluation step of the A method"): pass@16 minus GRPO's at the same avg@16 (over
    every GRPO configuration's trajectory) and avg@16 minus GRPO's at equal rows (GRPO at `base`). `configs`: each
    A method's configuration (part a: both at v3's rate; part c: each at its tuned rate)."""
    configs = configs if configs is not None else {"popo": CONFIG, "raft": CONFIG}
    grpo = [t for t in sets if t.method == "grpo"]
    same_rate = next(t for t in grpo if t.config == base)
    lines = [f"## Along the trajectories (validation; {resamples:,} resamples each, uncorrected: descriptive)", "",
             "At each evaluation of " + ", ".join(f"{m} {c}" for m, c in configs.items()) + ": its seed-mean point, "
             "its pass@16 minus GRPO's best pass@16 at the same avg@16 (read off every GRPO configuration that reaches "
             "it; '-' where none does), and its avg@16 minus GRPO " + base + "'s at the same rows through "
             "forward+backward.", "",
             "| A | step | avg@16 | pass@16 | pass@16 − GRPO's at that avg@16 [95%] | avg@16 − GRPO's at equal rows [95%] |",
             "|" + " --- |" * 6]
    numbers: dict = {}
    for t in (t for t in sets if configs.get(t.method) == t.config):
        avg, breadth = mean_curve(t, t.k)
        for e, step in enumerate(t.steps.tolist()):
            if step == 0:
                continue
            m = matched_pass(t, grpo, j=t.k, a_step=step, resamples=resamples)
            c = matched_compute(t, same_rate, a_step=step, resamples=resamples)
            numbers[f"{t.method} {step}"] = {"avg": float(avg[e]), "pass": float(breadth[e]), "matched_pass": m.estimate,
                                             "pass_low": m.low, "pass_high": m.high, "matched_rows": c.estimate,
                                             "rows_low": c.low, "rows_high": c.high}
            shown = "-" if m.estimate != m.estimate else f"{m.estimate:+.3f} [{m.low:+.3f}, {m.high:+.3f}]"
            lines.append(f"| {t.method} | {step} | {avg[e]:.3f} | {breadth[e]:.3f} | {shown} | "
                         f"{c.estimate:+.3f} [{c.low:+.3f}, {c.high:+.3f}] |")
    return lines + [""], numbers


def v3_seed_upper() -> float:
    """The upper 95% chi-square bound of the seed variance of pass@16 in v3's finals, the larger of GRPO's and
    POPO's (`../study_v3/erratum.py` writes it)."""
    v3 = json.loads((Path(__file__).resolve().parents[1] / "study_v3" / "countdown" / "erratum.json").read_text())
    return max(v3["seed_variance"][f"{arm} pass@16"]["upper95"] for arm in ("grpo", "popo"))


def choose_b(sets: list[Trajectories], v3_seed_upper: float, *, problems: int = TEST_PROBLEMS,
             configs: dict[str, str] | None = None, grpo_configs: tuple[str, ...] | None = None,
             margin: float = MARGIN, first_step: int = 0, title: str = "Part b's choices (validation; the "
             "pre-registration's rule and addendum 1)") -> tuple[list[str], dict]:
    """Part b's choices on validation (the pre-registration's b and addendum 1): POPO's stopping step s_P (its
    plateau step, the last step if still rising) and avg@16 a_P there; GRPO's matched (rate, step) over every
    GRPO configuration and evaluation step, the closest seed-mean avg@16 to a_P, ties within TIE broken by the
    highest seed-mean pass@16 (GRPO 1e-4's plateau instead when none comes within MARGIN); RAFT's plateau step;
    and the number of final seeds S by the power rule: seed variance of pass@16 the larger of v3's upper bound
    (`v3_seed_upper`) and the plateau runs' estimate at the chosen points, interaction and residual from the same
    points, S the smallest of SEED_OPTIONS whose minimum detectable pass@16 difference is at most 0.03.

    Part c2 (addendum 5) uses the same rule with its own `configs` (each arm's tuned rate: "popo", "raft" and
    "grpo", GRPO's fallback), `grpo_configs` (the GRPO configurations searched; None: all), `margin` and
    `first_step` (the earliest GRPO step that may be matched)."""
    explicit, configs = configs is not None, configs if configs is not None else {"popo": CONFIG, "raft": CONFIG,
                                                                                "grpo": CONFIG}
    by = {(t.method, t.config): t for t in sets}
    popo, raft = by[("popo", configs["popo"])], by[("raft", configs["raft"])]

    def stop(t: Trajectories) -> int:
        step = plateau_step(levels(t.steps, mean_curve(t, t.k)[0]))
        return int(t.steps[-1]) if step is None else step

    s_p = stop(popo)
    a_p = float(mean_curve(popo, popo.k)[0][popo.index(s_p)])
    candidates = []
    for t in (t for t in sets if t.method == "grpo" and (grpo_configs is None or t.config in grpo_configs)):
        avg, breadth = mean_curve(t, t.k)
        candidates += [(abs(float(avg[e]) - a_p), -float(breadth[e]), t.config, int(t.steps[e]), float(avg[e]),
                        float(breadth[e])) for e in range(len(t.steps)) if t.steps[e] >= first_step]
    closest = min(c[0] for c in candidates)
    if closest <= margin:
        near = [c for c in candidates if c[0] <= closest + TIE]
        _, _, config, s_g, a_g, p_g = min(near, key=lambda c: (c[1], c[0]))
        how = "matched"
    else:
        base = by[("grpo", configs["grpo"])]
        config, s_g = configs["grpo"], stop(base)
        a_g, p_g = (float(v[base.index(s_g)]) for v in mean_curve(base, base.k))
        how = f"no GRPO configuration comes within {margin} of a_P: GRPO {config} at its plateau"
    grpo = by[("grpo", config)]
    x = pass_at(popo.correct[:, popo.index(s_p)], popo.k, 16)
    y = pass_at(grpo.correct[:, grpo.index(s_g)], grpo.k, 16)
    cx, cy = variance_components(x), variance_components(y)
    seed_var = max(v3_seed_upper, cx.seed, cy.seed)
    comp = Components(seed_var, 0.0, max(cx.residual, cy.residual))
    interaction = interaction_variance(x, y)
    mde = {s: minimum_detectable(difference_se(comp, interaction, s, problems)) for s in SEED_OPTIONS}
    seeds = next((s for s in SEED_OPTIONS if mde[s] <= 0.03), SEED_OPTIONS[-1])
    numbers = {"s_P": s_p, "a_P": a_p, "grpo_config": config, "s_G": s_g, "a_G": a_g, "pass_G": p_g, "how": how,
               "raft_stop": stop(raft), "grpo_stop": stop(grpo), "seed_variance": seed_var,
               "v3_seed_upper": v3_seed_upper, "plateau_seed": [cx.seed, cy.seed], "interaction": interaction,
               "residual": comp.residual, "mde": mde, "seeds": seeds}
    if explicit:  # c2: its own rates and margin travel with the choice (b's committed choice predates them)
        numbers |= {"margin": margin, "popo_config": configs["popo"], "raft_config": configs["raft"]}
    lines = [f"## {title}", "",
             f"- POPO {configs['popo']} stops at step {s_p} (a_P = {a_p:.4f} validation avg@16, pass@16 "
             f"{float(mean_curve(popo, popo.k)[1][popo.index(s_p)]):.4f}); RAFT{' ' + configs['raft'] if explicit else ''} "
             f"at {stop(raft)}.",
             f"- GRPO's matched configuration: {config} at step {s_g} (avg@16 {a_g:.4f}, pass@16 {p_g:.4f}; {how});"
             f" its run continues to step {max(s_g, stop(grpo))} ("
             + (f"its plateau step is {plateau}" if (plateau := plateau_step(levels(grpo.steps, mean_curve(grpo, grpo.k)[0])))
                is not None else f"it is still rising at step {int(grpo.steps[-1])}") + ").",
             f"- Power: pass@16 seed variance {seed_var:.2e} (the larger of v3's upper bound {v3_seed_upper:.2e} and "
             f"these runs' {cx.seed:.2e} / {cy.seed:.2e}), arm x problem {interaction:.2e}, residual "
             f"{comp.residual:.2e} (from 16 validation samples, where pass@16 is 0 or 1: larger than the residual of pass@16 "
             f"estimated from 64 test samples, so the seeds are, if anything, more than needed); minimum detectable pass@16 difference on {problems:,} problems: "
             + ", ".join(f"{s} seeds {m:.4f}" for s, m in mde.items()) + f". **Final seeds per arm: {seeds}.**", ""]
    return lines, numbers


def plateau_report(data: Path, *, resamples: int = 10_000) -> dict:
    sets = from_tables(read_rows(data / TRAJECTORIES, TRAJECTORY_FIELDS), read_rows(data / OUTCOMES, OUTCOME_FIELDS))
    table, numbers = arm_rows(sets)
    complete = {t.method for t in sets if t.config == CONFIG and len(t.seeds) == SEEDS} >= {"grpo", "popo", "raft"}
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
    tested, chosen, stepwise = {}, {}, {}
    if complete:
        lines, tested = tests_a(sets, resamples=resamples)
        text += lines
    if complete:
        lines, stepwise = along_steps(sets)
        text += lines
    if complete and {t.config for t in sets if t.method == "grpo" and len(t.seeds) == SEEDS} >= set(GRPO_CONFIGS):
        lines, chosen = choose_b(sets, v3_seed_upper())
        text += lines
    text += frontier_lines(sets, "grpo", resamples=1000)
    (data / "report.md").write_text("\n".join(text) + "\n")
    (data / "numbers.json").write_text(json.dumps({"complete": complete, "arms": numbers, "a": tested, "along": stepwise, "b": chosen}, indent=1,
                                                  sort_keys=True, default=float) + "\n")
    return numbers


def warmups(folder: Path, band: tuple[float, float] = (0.30, 0.60)) -> int | None:
    """Part c, phase 0: each warm-up length's validation scores (``warmup-STEPS.json`` of `popo eval`) as
    report.md in `folder`; the chosen length is the first (shortest) whose pass@16 lies in `band`, or None."""
    rows, chosen = [], None
    for path in sorted(folder.glob("warmup-*.json"), key=lambda q: int(q.stem.split("-")[1])):
        steps, scores = int(path.stem.split("-")[1]), json.loads(path.read_text())["results"]["testbed"]
        breadth = scores["pass@16"]
        if chosen is None and band[0] <= breadth <= band[1]:
            chosen = steps
        rows.append(f"| {steps} | {scores['greedy_acc']:.3f} | {scores['avg@16']:.3f} | {breadth:.3f} |")
    verdict = (f"**Chosen: {chosen} warm-up steps**, the first whose pass@16 lies in [{band[0]}, {band[1]}]."
               if chosen is not None else f"**No warm-up length gives a pass@16 in [{band[0]}, {band[1]}].**")
    (folder / "report.md").write_text("\n".join([
        "# Study v4, part c, phase 0: warm-up length (validation, exploratory)", "",
        "Made by `python docs/results/study_v4/derive.py warmups docs/results/study_v4/task_c/warmups` from the "
        "`popo eval` files beside it: countdown with 4 numbers in 1-20, 500 validation problems, greedy and 16 "
        "samples at temperature 1, at most 48 new tokens.", "",
        "| warm-up steps | greedy | avg@16 | pass@16 |", "| --- | --- | --- | --- |", *rows, "", verdict, ""]))
    return chosen


def finals_plan(numbers: dict, key: str = "b") -> list[str]:
    """b's final runs from b's committed choice (``numbers.json``'s "b"; c2's: "finals"), one line per arm: ``ARM
    CONFIG STEPS EVAL_STEPS SEEDS`` (test evaluations at step 0 and EVAL_STEPS besides the last; seeds 100 on)."""
    b = numbers[key]
    grpo_last = max(b["s_G"], b["grpo_stop"])
    return [f"popo {b.get('popo_config', CONFIG)} {b['s_P']} 0 {b['seeds']}",
            f"raft {b.get('raft_config', CONFIG)} {b['raft_stop']} 0 {b['seeds']}",
            f"grpo {b['grpo_config']} {grpo_last} 0{',' + str(b['s_G']) if b['s_G'] != grpo_last else ''} {b['seeds']}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plateau")
    p.add_argument("data", type=Path)
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of a's tests")
    w = sub.add_parser("warmups", help="part c, phase 0: the warm-up table and the chosen length (its last line)")
    w.add_argument("folder", type=Path)
    f = sub.add_parser("finals-plan", help="part b: each arm's final runs, from the plateau folder's numbers.json")
    f.add_argument("data", type=Path)
    args = parser.parse_args(argv)
    if args.command == "finals-plan":
        print("\n".join(finals_plan(json.loads((args.data / "numbers.json").read_text()))))
        return
    if args.command == "warmups":
        chosen = warmups(args.folder)
        print(chosen if chosen is not None else "none")
        raise SystemExit(0 if chosen is not None else 1)
    print(json.dumps(plateau_report(args.data, resamples=args.resamples), indent=1))


if __name__ == "__main__":
    main()
