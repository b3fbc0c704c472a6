"""The study figures (matplotlib, Agg backend, imported on first use): the demo's learning curve, and for
`popo report` curves with shaded confidence intervals, side-by-side diagnostic panels and a forest plot,
with `study_plots`, which draws all of the report's figures from its runs' metrics records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from popo.study.stats import mean_ci


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (no import side effect at module load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], path: Path, start_acc: float | None) -> None:
    """The demo's figure: held-out greedy accuracy against rollouts sampled, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, history in histories.items():
        points = [(h.get("rollouts_total", 0), h["eval/greedy_acc"]) for h in history if "eval/greedy_acc" in h]
        if start_acc is not None:
            points = [(0, start_acc)] + [p for p in points if p[0] > 0]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xlabel("rollouts sampled")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title("RL from the warmed-up testbed model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _clipped(value: float, limits: tuple[float, float] | None) -> float:
    return value if limits is None else min(max(value, limits[0]), limits[1])


def plot_curves(series: dict[str, list[tuple[float, float, float]]], path: Path, *, xlabel: str, ylabel: str,
                title: str, baseline: float | None = None,
                limits: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """One line per name through (x, mean, CI half-width) points, with a shaded interval clipped to
    `limits` (an accuracy cannot leave [0, 1], whatever a t interval over few seeds says)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in series.items():
        xs, ys, hs = ([p[i] for p in points] for i in range(3))
        line, = ax.plot(xs, ys, marker="o", markersize=3, label=name)
        if all(h == h for h in hs):
            ax.fill_between(xs, [_clipped(y - h, limits) for y, h in zip(ys, hs)],
                            [_clipped(y + h, limits) for y, h in zip(ys, hs)], color=line.get_color(), alpha=0.12)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", linewidth=1, label="warmed-up start (dotted)")
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def draw_panels(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], xlabel: str, *,
                empty_note: str = "no data"):
    """The figure of :func:`plot_panels` (not saved); a panel without any point says `empty_note` in its
    middle rather than staying blank."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for name, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, label=name)
        if not any(series.values()):
            ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", fontsize=9,
                    color="grey")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    with_lines = [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]
    if with_lines:
        with_lines[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_panels(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: Path, xlabel: str, *,
                empty_note: str = "no data") -> None:
    """Side-by-side panels of (x, y) lines, one panel per (title, series); empty panels say `empty_note`."""
    fig = draw_panels(panels, xlabel, empty_note=empty_note)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    pyplot().close(fig)


def plot_forest(rows: list[tuple[str, list[tuple[float, float]]]], labels: list[str], path: Path, *,
                start: list[float | None], limits: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Per variant, mean +- CI of each metric in its own panel (a "forest plot"), the bars clipped to
    `limits`; a dotted line marks the warmed-up start."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(labels), figsize=(3.8 * len(labels), 0.32 * len(rows) + 1.8),
                             squeeze=False, sharey=True)
    ys = list(range(len(rows)))[::-1]
    for j, (ax, label) in enumerate(zip(axes[0], labels)):
        means = [r[1][j][0] for r in rows]
        halves = [r[1][j][1] if r[1][j][1] == r[1][j][1] else 0.0 for r in rows]
        below = [m - _clipped(m - h, limits) for m, h in zip(means, halves)]
        above = [_clipped(m + h, limits) - m for m, h in zip(means, halves)]
        ax.errorbar(means, ys, xerr=[below, above], fmt="o", markersize=4, capsize=2)
        if start[j] is not None:
            ax.axvline(start[j], color="grey", linestyle=":", linewidth=1, label="warmed-up start")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels([r[0] for r in rows], fontsize=9)
    fig.suptitle("final held-out accuracy: mean over seeds with 95% CI (clipped to [0, 1])", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def step_seconds(record: dict) -> float:
    """Training-loop seconds of one step (sampling, verifying, updating; evaluation excluded)."""
    return sum(v for k, v in record.items() if k.startswith("time/"))


def eval_points(records: list[dict], metric: str) -> list[tuple[int, float, float]]:
    """(rollouts so far, training seconds so far, metric) at every evaluation."""
    out, seconds = [], 0.0
    for r in records:
        seconds += step_seconds(r)
        if f"eval/{metric}" in r:
            out.append((r.get("rollouts_total", 0), seconds, r[f"eval/{metric}"]))
    return out


def _curve(by_seed: dict[int, list[dict]], metric: str, axis: int) -> list[tuple[float, float, float]]:
    """Mean over seeds of `metric` at each evaluation, against rollouts (axis 0) or seconds (axis 1)."""
    per_seed = [eval_points(records, metric) for records in by_seed.values()]
    count = min(len(p) for p in per_seed)
    out = []
    for i in range(count):
        ci = mean_ci([p[i][2] for p in per_seed])
        out.append((sum(p[i][axis] for p in per_seed) / len(per_seed), ci.mean, ci.half_width))
    return out


def _smoothed(by_seed: dict[int, list[dict]], key: str, window: int = 10) -> list[tuple[float, float]]:
    """Mean over seeds of a training metric by step, then a trailing moving average."""
    sums: dict[int, list[float]] = {}
    for records in by_seed.values():
        for r in records:
            if key in r and isinstance(r[key], (int, float)) and r.get("step", 0) > 0:
                sums.setdefault(int(r["step"]), []).append(float(r[key]))
    steps = sorted(sums)
    means = [sum(sums[s]) / len(sums[s]) for s in steps]
    out = []
    for i, s in enumerate(steps):
        chunk = means[max(0, i - window + 1): i + 1]
        out.append((s, sum(chunk) / len(chunk)))
    return out


def _diagnostic_panels(rl: dict[str, dict[int, list[dict]]]) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    """The diagnostics figure's panels: (title, smoothed series by variant) for the RL variants `rl`."""
    return [("train pass rate", {n: _smoothed(s, "pass_rate") for n, s in rl.items()}),
            ("token entropy of trained rows", {n: _smoothed(s, "entropy") for n, s in rl.items()}),
            ("implicit-negative Δ log-prob", {n: _smoothed(s, "implicit_neg_logprob_delta", 3)
                                              for n, s in rl.items()}),
            ("distinct positives / positives", {n: _smoothed(s, "distinct_positive_frac", 3)
                                                for n, s in rl.items()}),
            ("gradient share of NLL (POPO family)", {n: _smoothed(s, "grad_share/nll", 3)
                                                     for n, s in rl.items()})]


def study_plots(out: Path, runs: dict, done: dict, rows: list, metrics: list[str], start_means: list[float]) -> None:
    """The report's figures: final metrics (forest plot), learning curves against rollouts and seconds, and
    the training diagnostics. Only variants without a space in their name (no sweep points) get curves."""
    start = start_means[0]
    main = {n: s for n, s in runs.items() if " " not in n}
    plot_forest([(n, [(ci.mean, ci.half_width) for ci in cis]) for n, _, cis in rows], metrics,
                out / "final_accuracy.png", start=start_means)
    if main:
        plot_curves({n: _curve(s, "greedy_acc", 0) for n, s in main.items()}, out / "curve_rollouts.png",
                    xlabel="rollouts sampled (sft-more: RL-equivalent budget)", ylabel="held-out greedy accuracy",
                    title="mean over seeds, shaded 95% CI", baseline=start)
        plot_curves({n: _curve(s, "greedy_acc", 1) for n, s in main.items()}, out / "curve_walltime.png",
                    xlabel="training seconds (evaluation excluded)", ylabel="held-out greedy accuracy",
                    title="mean over seeds, shaded 95% CI", baseline=start)
        rl = {n: s for n, s in main.items() if not next(iter(done[n].values())).get("sft")}
        plot_panels(_diagnostic_panels(rl), out / "diagnostics.png", "step",
                    empty_note="no data (diag_every > steps)")
