"""The frontier section of a study report: every method's trajectory in the (avg@k, pass@k) plane, and the
matched comparisons of `popo.study.frontier` against a baseline method.

`popo compare` and `popo sweep` folders hold one run folder per (variant, seed); each run's evaluations are its
trajectory (`popo.study.trajectory`). A variant named ``METHOD SETTING`` (a sweep point, e.g. ``grpo lr=1e-4``)
is method ``METHOD`` at configuration ``SETTING``; a plain ``METHOD`` is at ``lr=<its learning rate>``. Only
finished runs count, and a configuration's seeds are read at the evaluation steps all of them share.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from popo.study.frontier import Trajectories, best_avg, matched_compute, matched_pass, mean_curve
from popo.study.runs import Variant
from popo.study.trajectory import trajectory

FIGURE = "frontier.png"


def rate_label(lr: float) -> str:
    """A learning rate as a configuration's label: ``lr=1e-4`` (one significant digit, no leading zero)."""
    return "lr=" + f"{lr:.0e}".replace("e-0", "e-")


def _method_config(variant: str, run_dir: Path) -> tuple[str, str]:
    method, _, setting = variant.partition(" ")
    if setting or not (run_dir / "config.yaml").is_file():
        return method, setting
    import yaml

    lr = float(yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"])
    return method, rate_label(lr)


def study_trajectories(out: str | Path) -> list[Trajectories]:
    """The finished runs of a study folder as one `Trajectories` per (method, configuration), evaluations with
    per-problem sample outcomes only."""
    out = Path(out)
    study = json.loads((out / "study.json").read_text())
    groups: dict[tuple[str, str], dict[int, list]] = {}
    for variant in study.get("variants", []):
        name = variant["name"]
        folder = out / Variant(name, ()).dirname
        for run_dir in sorted(folder.glob("seed-*")):
            if not (run_dir / "done.json").exists():
                continue
            points = [p for p in trajectory(run_dir) if p.correct]
            if points:
                key = _method_config(name, run_dir)
                groups.setdefault(key, {})[int(run_dir.name.split("-")[1])] = points
    sets = []
    for (method, config), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        steps = sorted(set.intersection(*({p.step for p in by_seed[s]} for s in seeds)))
        if not steps:
            continue
        pick = {s: {p.step: p for p in by_seed[s]} for s in seeds}
        correct = np.array([[pick[s][t].correct for t in steps] for s in seeds], dtype=float)
        compute = {name: np.array([[float(getattr(pick[s][t], name)) for t in steps] for s in seeds])
                   for name in ("rows", "tokens", "seconds")}
        sets.append(Trajectories(method, config, tuple(seeds), np.array(steps), correct, pick[seeds[0]][steps[0]].k,
                                 compute))
    return sets


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:+.3f}"


def _interval(m) -> str:
    if m.estimate != m.estimate:
        return "B never reaches A's avg@k | | "
    p = "< 0.001" if m.p_difference < 0.001 else f"{m.p_difference:.3f}"
    return f"{_f(m.estimate)} | [{_f(m.low)}, {_f(m.high)}] | {p}"


def frontier_lines(sets: list[Trajectories], baseline: str, *, resamples: int = 1000) -> list[str]:
    """Markdown: each configuration's start, best and final point, then every other method's configurations
    against the baseline method: pass@k at matched avg@k, avg@k at matched rows and at matched seconds."""
    if not sets:
        return []
    k = sets[0].k
    lines = [f"| method | config | seeds | evaluations | final avg@{k} | final pass@{k} | best avg@{k} (step) |",
             "|" + " --- |" * 7]
    best = best_avg(sets)
    for t in sets:
        avg, breadth = mean_curve(t, k)
        top = int(np.argmax(avg))
        lines.append(f"| {t.method} | {t.config} | {len(t.seeds)} | {len(t.steps)} | {avg[-1]:.3f} | {breadth[-1]:.3f} "
                     f"| {avg[top]:.3f} ({int(t.steps[top])}) |")
    lines += ["", "Best avg@%d per method (over configurations and steps): " % k +
              "; ".join(f"{m} {v:.3f} ({c}, step {s})" for m, (c, s, v) in sorted(best.items())) + "."]
    base = [t for t in sets if t.method == baseline]
    others = [t for t in sets if t.method != baseline]
    if not base or not others:
        return lines
    chosen = max(base, key=lambda t: mean_curve(t, k)[0][-1])  # the baseline configuration that ends highest
    lines += ["", f"**Matched comparisons against {baseline}** (A − B; two-way bootstrap over seeds and problems, "
              f"{resamples} resamples; `popo.study.frontier`). pass@{k} at A's final avg@{k}, {baseline} read off "
              f"all its configurations' trajectories; avg@{k} at A's final compute, {baseline} at {chosen.config}.",
              "", f"| A | config | A's avg@{k} | pass@{k} − {baseline}'s at that avg@{k} | 95% interval | p "
              f"| avg@{k} − {baseline}'s at equal rows | 95% interval | p |", "|" + " --- |" * 9]
    for t in others:
        m = matched_pass(t, base, j=k, resamples=resamples)
        c = matched_compute(t, chosen, by="rows", resamples=resamples)
        lines.append(f"| {t.method} | {t.config} | {m.a_value:.3f} | {_interval(m)} | {_interval(c)} |")
    return lines


def draw_frontier(sets: list[Trajectories], path: str | Path) -> Path | None:
    """pass@k against avg@k: each seed a thin line, each configuration's seed mean a thick one with a marker per
    evaluation, one colour per method, one marker shape per configuration; the start is the shared first point."""
    from popo.study.plots import pyplot

    plt = pyplot()
    if plt is None or not sets:
        return None
    k = sets[0].k
    methods = sorted({t.method for t in sets})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = "osD^vP*X"
    configs = sorted({t.config for t in sets})
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for t in sets:
        colour, marker = colours[t.method], markers[configs.index(t.config) % len(markers)]
        for s in range(len(t.seeds)):
            one = Trajectories(t.method, t.config, (t.seeds[s],), t.steps, t.correct[s:s + 1], k, {})
            ax.plot(*mean_curve(one, k), color=colour, alpha=0.25, linewidth=0.8)
        avg, breadth = mean_curve(t, k)
        ax.plot(avg, breadth, color=colour, marker=marker, markersize=4, linewidth=2, label=f"{t.method} {t.config}")
        ax.annotate(f"{int(t.steps[-1])}", (avg[-1], breadth[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"avg@{k} (sampled accuracy)")
    ax.set_ylabel(f"pass@{k} (breadth)")
    ax.set_title("Trajectories from the start (each evaluation a point; thin: seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def frontier_section(out: str | Path, baselines: list[str]) -> str:
    """The report's "Frontier" section for the study folder `out` (and its ``frontier.png``): the trajectories'
    table and figure and the matched comparisons against the first of `baselines` that ran (grpo first when it
    did). Runs need at least two evaluations with samples (`train.eval_every`, `train.eval_samples`)."""
    sets = study_trajectories(out)
    head = "## Frontier\n\n"
    if not sets or all(len(t.steps) < 2 for t in sets):
        return head + ("Needs at least two evaluations with samples per run (`train.eval_every` below `train.steps`, "
                       "`train.eval_samples` > 0): none here.\n\n")
    methods = {t.method for t in sets}
    baseline = next((b for b in ["grpo", *baselines] if b in methods), sorted(methods)[0])
    figure = draw_frontier(sets, Path(out) / FIGURE)
    lines = ["Each method's evaluations in the plane of sampled accuracy (avg@k) and breadth (pass@k), from the "
             "start; a method that stops further along the trade-off shows more of one and less of the other, so "
             "the comparisons below put both methods at the same avg@k (or the same compute) first "
             "(docs/frontier.md says how to read them).", ""]
    if figure is not None:
        lines += [f"![frontier]({FIGURE})", ""]
    return head + "\n".join(lines + frontier_lines(sets, baseline)) + "\n\n"
