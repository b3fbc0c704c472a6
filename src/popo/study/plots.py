"""The study figures (matplotlib, Agg backend, imported on first use): the demo's learning curve and its
trajectories in the (avg@k, pass@k) plane, and for `popo report` curves with shaded confidence intervals, a
grid of diagnostic panels and a forest plot,
with `study_plots`, which draws all of the report's figures from its runs' metrics records."""

from __future__ import annotations

from pathlib import Path

from popo.study.stats import mean_ci


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (no import side effect at module load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DEMO_METRICS = (("greedy", "greedy accuracy"), ("avg", "avg@{k}"), ("pass", "pass@{k}"))
"""The demo's per-evaluation metrics: key in its trajectory points, and label (k: samples per problem)."""


def plot_learning_curves(trajectories: dict[str, list[dict]], path: Path, k: int) -> None:
    """The demo's learning curve (`draw_learning_curves`), saved to `path`."""
    fig = draw_learning_curves(trajectories, k)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def draw_learning_curves(trajectories: dict[str, list[dict]], k: int):
    """The demo's learning curve (not saved): greedy accuracy, avg@k and pass@k on its held-out split against
    training steps, one panel per metric and one line per method, shaded by the 95% interval over problems of
    each evaluation. `trajectories` maps a method to its evaluations: ``{"step": s, metric: [mean, low, high]}``."""
    plt = pyplot()
    metrics = [(key, label.format(k=k)) for key, label in DEMO_METRICS
               if all(key in p for points in trajectories.values() for p in points)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for method, points in trajectories.items():
            steps = [p["step"] for p in points]
            line, = ax.plot(steps, [p[key][0] for p in points], marker="o", markersize=3, label=method)
            ax.fill_between(steps, [p[key][1] for p in points], [p[key][2] for p in points],
                            color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("training step", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out (demo split)", fontsize=10)
    axes[0][0].legend(fontsize=9)
    fig.suptitle("mean over problems at each evaluation, shaded 95% interval over problems", fontsize=10)
    fig.tight_layout()
    return fig


def plot_tradeoff(trajectories: dict[str, list[dict]], path: Path, k: int) -> None:
    """The demo's trade-off figure (`draw_tradeoff`), saved to `path`."""
    fig = draw_tradeoff(trajectories, k)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def _bars(points: list[dict], key: str) -> list[list[float]]:
    """Error-bar lengths (below, above) of `key`'s [mean, low, high] at each point."""
    return [[p[key][0] - p[key][1] for p in points], [p[key][2] - p[key][0] for p in points]]


def draw_tradeoff(trajectories: dict[str, list[dict]], k: int):
    """The demo's trade-off figure (not saved): each method's evaluations in the (avg@k, pass@k) plane in step
    order, arrows from one evaluation to the next, the step beside each point, bars for the 95% intervals over
    problems, and the start (step 0, shared by every method) as a star."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    start = next(iter(trajectories.values()))[0]
    for method, points in trajectories.items():
        xs, ys = [p["avg"][0] for p in points], [p["pass"][0] for p in points]
        line, = ax.plot(xs, ys, marker="o", markersize=4, linewidth=0, label=method)
        color = line.get_color()
        ax.errorbar(xs, ys, xerr=_bars(points, "avg"), yerr=_bars(points, "pass"), fmt="none", ecolor=color,
                    alpha=0.3, linewidth=0.8)
        for a, b in zip(zip(xs, ys), list(zip(xs, ys))[1:]):
            ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=color, linewidth=1.3))
        for p, x, y in zip(points[1:], xs[1:], ys[1:]):
            ax.annotate(str(p["step"]), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, color=color)
    ax.plot([start["avg"][0]], [start["pass"][0]], marker="*", markersize=15, color="black", linewidth=0,
            label="start (step 0, shared)", zorder=5)
    ax.set_xlabel(f"avg@{k}: sampled accuracy", fontsize=10)
    ax.set_ylabel(f"pass@{k}: problems solved by at least one of {k} samples", fontsize=10)
    ax.set_title("where each method went: evaluations labelled by step\n(bars: 95% intervals over problems)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


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
                empty_note: str = "no data", columns: int = 2):
    """The figure of :func:`plot_panels` (not saved): a grid of `columns` panels per row, so that it stays
    legible at page width; a panel without any point says `empty_note` in its middle rather than staying
    blank. The legend goes in the grid's first spare cell when there is one, else on the first panel with
    lines."""
    plt = pyplot()
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.3 * rows), squeeze=False)
    cells = list(axes.ravel())
    for ax, (title, series) in zip(cells, panels):
        for name, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, label=name)
        if not any(series.values()):
            ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", fontsize=10,
                    color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    spare = cells[len(panels):]
    for ax in spare[1:]:
        fig.delaxes(ax)
    with_lines = [ax for ax in cells[:len(panels)] if ax.get_legend_handles_labels()[0]]
    if spare:
        spare[0].axis("off")
        if with_lines:
            spare[0].legend(*with_lines[0].get_legend_handles_labels(), loc="center", fontsize=9,
                            ncol=1 + len(with_lines[0].get_legend_handles_labels()[0]) // 8)
    elif with_lines:
        with_lines[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_panels(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: Path, xlabel: str, *,
                empty_note: str = "no data") -> None:
    """A grid of panels of (x, y) lines (`draw_panels`), one per (title, series); empty ones say `empty_note`."""
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
    """The report's figures, every variant in each (a sweep's points included): final metrics (forest plot),
    learning curves against rollouts and seconds, and the training diagnostics of the RL variants."""
    start = start_means[0]
    plot_forest([(n, [(ci.mean, ci.half_width) for ci in cis]) for n, _, cis in rows], metrics,
                out / "final_accuracy.png", start=start_means)
    plot_curves({n: _curve(s, "greedy_acc", 0) for n, s in runs.items()}, out / "curve_rollouts.png",
                xlabel="rollouts sampled (sft-more: RL-equivalent budget)", ylabel="held-out greedy accuracy",
                title="mean over seeds, shaded 95% CI", baseline=start)
    plot_curves({n: _curve(s, "greedy_acc", 1) for n, s in runs.items()}, out / "curve_walltime.png",
                xlabel="training seconds (evaluation excluded)", ylabel="held-out greedy accuracy",
                title="mean over seeds, shaded 95% CI", baseline=start)
    rl = {n: s for n, s in runs.items() if not next(iter(done[n].values())).get("sft")}
    plot_panels(_diagnostic_panels(rl), out / "diagnostics.png", "step", empty_note="no data (diag_every > steps)")
