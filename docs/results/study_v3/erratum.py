"""Study v3's erratum numbers, re-derived from the committed raw tables alone.

    python docs/results/study_v3/erratum.py docs/results/study_v3/countdown      # writes erratum.md / .json there

What it computes (each a section of ``erratum.md``; the erratum at the end of ``preregistration.md`` quotes them):

1. **Matched accuracy on validation** (tuning tables, step 500, seeds 0-2, 500 problems). Each arm's final point
   at each rate against GRPO's final points over its rates, ordered by rate (`popo.study.frontier.matched_pass`:
   GRPO's pass@16 interpolated at the arm's avg@16, two-way bootstrap over seeds and problems); and the one pair
   the reading starts from, POPO 1e-4 against GRPO 1e-5 (equal avg@16), paired per problem.
2. **Along the trajectories** (validation curves at steps 0, 250, 500; point estimates: no per-problem data at
   step 250): where an arm's point at step 250 and 500 lies relative to GRPO's curve through all its rates and
   steps (the first bracketing segment in rate-then-step order, the highest where several reach it).
3. **The test split's primary difference**: its variance split into seeds, arm x problem interaction and
   residual, and the realised minimum detectable difference (2.80 SE) against the planned 0.0155.
4. **The start**: the mean of its 10 committed step-0 test evaluations (one per evaluation seed) beside the one
   the report used.
5. **Greedy accuracy, every arm against GRPO**: TOST at v3's margin (exploratory, Holm over the arms), so that
   "the same greedy accuracy" is said only where equivalence is shown.
6. **The seed variance for planning**: each arm's seed component of avg@16 and pass@16 on test with its upper 95%
   chi-square bound (9 degrees of freedom), the bound later studies size their seeds from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import chi2

from popo.study.analysis import (CURVE_FIELDS, OUTCOME_FIELDS, minimum_detectable, pass_at, read_rows,
                                 score_matrix, two_way_bootstrap, variance_components)
from popo.study.frontier import Trajectories, first_crossing, matched_pass
from popo.study.stats import holm

ARMS = ("popo", "raft", "nsr", "w-reinforce")
RATES = ("3e-6", "1e-5", "3e-5", "1e-4", "3e-4")
TASK, K, MARGIN, RESAMPLES = "countdown", 16, 0.028812, 4000


def _final_points(rows: list[dict], arm: str) -> list[Trajectories]:
    """One single-point `Trajectories` per rate of `arm` (its final validation outcomes)."""
    out = []
    for rate in RATES:
        seeds, _, avg = score_matrix(rows, TASK, f"{arm} lr={rate}", "avg")
        correct = np.rint(avg * K)[:, None, :]  # [S, 1, P]
        out.append(Trajectories(arm, f"lr={rate}", tuple(seeds), np.array([500]), correct, K, {}))
    return out


def _over_rates(rows: list[dict], points: list[Trajectories]) -> Trajectories:
    """GRPO's curve over rates: the start, then its final points at increasing rates up to the rate of its
    highest mean avg@16 (past it the runs destabilise: 3e-4 ends below the start), as one trajectory."""
    best = int(np.argmax([p.correct.mean() for p in points]))
    _, _, start = score_matrix(rows, TASK, "start", "avg")
    seeds = len(points[0].seeds)
    first = np.repeat(np.rint(start * K)[:, None, :], seeds, axis=0)  # the start under every seed
    correct = np.concatenate([first] + [p.correct for p in points[:best + 1]], axis=1)  # [S, 1 + rates, P]
    return Trajectories(points[0].method, "over rates", points[0].seeds, np.arange(correct.shape[1]), correct, K, {})


def matched_validation(rows: list[dict]) -> dict:
    grpo = _over_rates(rows, _final_points(rows, "grpo"))
    out = {}
    for arm in ARMS:
        for rate, point in zip(RATES, _final_points(rows, arm)):
            m = matched_pass(point, [grpo], j=K, resamples=RESAMPLES, seed=1)
            out[f"{arm} lr={rate}"] = {"avg": m.a_value, "difference": m.estimate, "low": m.low, "high": m.high,
                                       "p": m.p_difference, "defined": m.defined}
    a = np.asarray(score_matrix(rows, TASK, "popo lr=1e-4", "correct")[2])
    b = np.asarray(score_matrix(rows, TASK, "grpo lr=1e-5", "correct")[2])
    pair = {name: two_way_bootstrap(pass_at(a, K, K) if name == "pass" else a / K,
                                    pass_at(b, K, K) if name == "pass" else b / K, resamples=10_000, seed=2)
            for name in ("avg", "pass")}
    out["pair popo 1e-4 - grpo 1e-5"] = {n: {"difference": t.estimate, "low": t.low, "high": t.high, "p": t.p_difference}
                                         for n, t in pair.items()}
    return out


def along_trajectories(curves: list[dict]) -> dict:
    """Each arm's seed-mean point at steps 250 and 500 against GRPO's curve through its rates and steps."""
    def mean_point(method: str, step: int) -> tuple[float, float]:
        hit = [r for r in curves if r["method"] == method and r["step"] == step and r["split"] == "validation"]
        return float(np.mean([r["avg"] for r in hit])), float(np.mean([r["pass"] for r in hit]))

    grpo = [[mean_point(f"grpo lr={rate}", s) for s in (0, 250, 500)] for rate in RATES]  # one line per rate
    out = {}
    for arm in ARMS:
        for rate in RATES:
            for step in (250, 500):
                x, y = mean_point(f"{arm} lr={rate}", step)
                reads = [first_crossing(np.array([[p[0] for p in line]]), np.array([[p[1] for p in line]]),
                                        np.array([x]))[0] for line in grpo]
                best = np.nanmax(reads) if not np.all(np.isnan(reads)) else float("nan")
                out[f"{arm} lr={rate} step {step}"] = {"avg": x, "pass": y, "grpo_pass": float(best),
                                                       "difference": float(y - best)}
    return out


def primary_variance(rows: list[dict]) -> dict:
    _, _, popo = score_matrix(rows, TASK, "popo", "avg")
    _, _, grpo = score_matrix(rows, TASK, "grpo", "avg")
    d = popo - grpo  # [S, P], paired by seed index
    s, p = d.shape
    c = variance_components(d)
    parts = {"seed": c.seed / s, "arm x problem": c.problem / p, "residual": c.residual / (s * p)}
    total = sum(parts.values())
    test = two_way_bootstrap(popo, grpo, resamples=10_000, seed=3)
    se_boot = (test.high - test.low) / (2 * 1.959964)
    return {"shares": {k: v / total for k, v in parts.items()}, "se_formula": float(np.sqrt(total)),
            "se_bootstrap": float(se_boot), "mde_formula": minimum_detectable(float(np.sqrt(total))),
            "mde_bootstrap": minimum_detectable(se_boot), "planned_mde": 0.0155, "seeds": s, "problems": p}


def start_evaluations(curves: list[dict], rows: list[dict]) -> dict:
    step0 = {int(r["seed"]): r for r in curves if r["split"] == "test" and r["step"] == 0 and r["method"] == "grpo"}
    avg = [step0[s]["avg"] for s in sorted(step0)]
    breadth = [step0[s]["pass"] for s in sorted(step0)]
    _, _, used = score_matrix(rows, TASK, "start", "avg")
    return {"evaluations": len(avg), "avg_mean": float(np.mean(avg)), "avg_min": float(min(avg)),
            "avg_max": float(max(avg)), "pass_mean": float(np.mean(breadth)), "avg_used": float(used.mean()),
            "rank_of_used": int(sum(a > used.mean() + 1e-6 for a in avg)) + 1}  # the curve holds float32 values


def greedy_equivalence(rows: list[dict]) -> dict:
    _, _, grpo = score_matrix(rows, TASK, "grpo", "greedy")
    tests = {arm: two_way_bootstrap(score_matrix(rows, TASK, arm, "greedy")[2], grpo, margin=MARGIN,
                                    resamples=10_000, seed=4)
             for arm in ("popo", "raft", "nsr", "w-reinforce", "popo-nosim")}
    adjusted, rejected = holm([t.p_equivalence for t in tests.values()])
    return {arm: {"difference": t.estimate, "low": t.low, "high": t.high, "p_tost": t.p_equivalence,
                  "p_tost_holm": q, "equivalent": r}
            for (arm, t), q, r in zip(tests.items(), adjusted, rejected)}


def seed_variance(rows: list[dict]) -> dict:
    out = {}
    for arm in ("grpo", "popo", "raft"):
        _, _, correct = score_matrix(rows, TASK, arm, "correct")
        for name, x in (("avg", correct / K), ("pass", pass_at(correct, K, K))):
            c, df = variance_components(x), x.shape[0] - 1
            out[f"{arm} {name}@16"] = {"seed": c.seed, "upper95": float(c.seed * df / chi2.ppf(0.05, df)),
                                       "residual": c.residual, "seeds": x.shape[0]}
    return out


# ------------------------------------------------------------------------------------------------ the page

def _f(x: float, signed: bool = True) -> str:
    return "n/a" if x != x else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _p(x: float) -> str:
    return "n/a" if x != x else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def render(n: dict) -> str:
    out = ["# Study v3: erratum numbers", "",
           "Made by `python docs/results/study_v3/erratum.py docs/results/study_v3/countdown` from the committed raw "
           "tables alone (`erratum.json` holds every number; `frontier.png` draws section 2's trajectories). The "
           "erratum at the end of [`../preregistration.md`](../preregistration.md) quotes them.", "",
           "## 1. Breadth at matched accuracy (validation, tuning runs, step 500, seeds 0-2)", "",
           "Each arm's final point at each rate against GRPO's curve over rates (the start, then GRPO's final points "
           "at 3e-6 ... 1e-4, its best rate): GRPO's pass@16 interpolated at the arm's avg@16 "
           f"(`popo.study.frontier.matched_pass`, two-way bootstrap over seeds and problems, {RESAMPLES} resamples).",
           "", "| arm | rate | avg@16 | pass@16 − GRPO's at that avg@16 | 95% interval | p |",
           "| --- | --- | --- | --- | --- | --- |"]
    for key, m in n["matched_validation"].items():
        if key.startswith("pair"):
            continue
        arm, rate = key.split(" lr=")
        cell = ("GRPO's curve does not reach it" if m["difference"] != m["difference"] else
                f"{_f(m['difference'])} | [{_f(m['low'])}, {_f(m['high'])}] | {_p(m['p'])}")
        out.append(f"| {arm} | {rate} | {_f(m['avg'], False)} | {cell} |" if "|" in cell else
                   f"| {arm} | {rate} | {_f(m['avg'], False)} | {cell} | | |")
    pair = n["matched_validation"]["pair popo 1e-4 - grpo 1e-5"]
    out += ["", "The pair the reading starts from, POPO at 1e-4 against GRPO at 1e-5 (equal avg@16), paired per "
            "problem (two-way bootstrap, 10,000 resamples): avg@16 "
            f"{_f(pair['avg']['difference'])} [{_f(pair['avg']['low'])}, {_f(pair['avg']['high'])}], pass@16 "
            f"{_f(pair['pass']['difference'])} [{_f(pair['pass']['low'])}, {_f(pair['pass']['high'])}] "
            f"(p = {_p(pair['pass']['p'])}).", "",
            "## 2. Along the trajectories (validation, steps 250 and 500, point estimates)", "",
            "Each arm's seed-mean point against GRPO's curves (one per rate, through steps 0, 250, 500; the first "
            "segment that brackets the arm's avg@16, the highest over rates). No per-problem data exists at step "
            "250, so these carry no interval.", "",
            "| arm | rate | step 250: avg@16, pass@16 − GRPO's | step 500: avg@16, pass@16 − GRPO's |",
            "| --- | --- | --- | --- |"]
    at = n["along_trajectories"]
    for arm in ARMS:
        for rate in RATES:
            cells = [at[f"{arm} lr={rate} step {s}"] for s in (250, 500)]
            out.append(f"| {arm} | {rate} | " + " | ".join(f"{_f(c['avg'], False)}, {_f(c['difference'])}"
                                                         for c in cells) + " |")
    v = n["primary_variance"]
    sh = v["shares"]
    out += ["", "## 3. The primary difference on test: where its variance comes from", "",
            f"POPO − GRPO avg@16 on test ({v['seeds']} seeds x {v['problems']} problems, paired by seed index): "
            f"of the variance of the mean difference, seeds {sh['seed']:.0%}, arm x problem interaction "
            f"{sh['arm x problem']:.0%}, residual {sh['residual']:.0%} (two-way model, `variance_components` on the "
            f"per-problem differences). Standard error {v['se_formula']:.4f} (formula) / {v['se_bootstrap']:.4f} "
            f"(bootstrap interval width / 3.92); realised minimum detectable difference {v['mde_formula']:.4f} / "
            f"{v['mde_bootstrap']:.4f} against the planned {v['planned_mde']}.", "",
            "## 4. The start", ""]
    st = n["start"]
    out += [f"The start was evaluated on test {st['evaluations']} times (once per final seed's evaluation seed): "
            f"avg@16 {st['avg_mean']:.4f} on average (range {st['avg_min']:.4f}-{st['avg_max']:.4f}), pass@16 "
            f"{st['pass_mean']:.4f}. The report used one of them, avg@16 {st['avg_used']:.4f} (rank "
            f"{st['rank_of_used']} of {st['evaluations']} from the top).", "",
            "## 5. Greedy accuracy: equivalence to GRPO (test, exploratory)", "",
            "| arm − grpo | greedy difference | 95% interval | TOST p at ±0.0288 | Holm | equivalent |",
            "| --- | --- | --- | --- | --- | --- |"]
    for arm, g in n["greedy_equivalence"].items():
        out.append(f"| {arm} | {_f(g['difference'])} | [{_f(g['low'])}, {_f(g['high'])}] | {_p(g['p_tost'])} | "
                   f"{_p(g['p_tost_holm'])} | {'yes' if g['equivalent'] else 'no'} |")
    out += ["", "## 6. Seed variance for planning (test, 10 seeds per arm)", "",
            "| arm, metric | seed component | upper 95% bound (chi-square, 9 df) | residual |", "| --- | --- | --- | --- |"]
    for key, c in n["seed_variance"].items():
        out.append(f"| {key} | {c['seed']:.2e} | {c['upper95']:.2e} | {c['residual']:.2e} |")
    return "\n".join(out) + "\n"


def draw_frontier(curves: list[dict], path: Path) -> None:
    """v3's validation trajectories in the (avg@16, pass@16) plane: one colour per arm, one line per rate through
    its seed-mean points at steps 0, 250 and 500 (the start is every line's first point), the rate at its end."""
    from popo.study.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 5.4))
    for i, arm in enumerate(("grpo", *ARMS)):
        colour = plt.get_cmap("tab10")(i)
        for j, rate in enumerate(RATES):
            pts = [[r for r in curves if r["method"] == f"{arm} lr={rate}" and r["step"] == s] for s in (0, 250, 500)]
            xs, ys = [float(np.mean([r["avg"] for r in p])) for p in pts], [float(np.mean([r["pass"] for r in p])) for p in pts]
            if xs[-1] < 0.2:  # a run that collapsed (nsr and w-reinforce at 3e-4) would squeeze the plot
                continue
            ax.plot(xs, ys, color=colour, marker="o", markersize=3, linewidth=1.4, label=arm if j == 0 else None)
            ax.annotate(rate, (xs[-1], ys[-1]), fontsize=6, color=colour, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("validation avg@16 (sampled accuracy)")
    ax.set_ylabel("validation pass@16 (breadth)")
    ax.set_title("Study v3: every arm's trajectory per rate (steps 0, 250, 500; seed means)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    args = parser.parse_args(argv)
    tuning = read_rows(args.data / "tuning" / "outcomes.csv.gz", OUTCOME_FIELDS)
    tuning_curves = read_rows(args.data / "tuning" / "curves.csv.gz", CURVE_FIELDS)
    finals = read_rows(args.data / "outcomes.csv.gz", OUTCOME_FIELDS)
    curves = read_rows(args.data / "curves.csv.gz", CURVE_FIELDS)
    numbers = {"matched_validation": matched_validation(tuning), "along_trajectories": along_trajectories(tuning_curves),
               "primary_variance": primary_variance(finals), "start": start_evaluations(curves, finals),
               "greedy_equivalence": greedy_equivalence(finals), "seed_variance": seed_variance(finals)}
    (args.data / "erratum.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    (args.data / "erratum.md").write_text(render(numbers))
    draw_frontier(tuning_curves, args.data / "frontier.png")


if __name__ == "__main__":
    main()
