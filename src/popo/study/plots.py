"""The study figures (matplotlib, Agg backend, imported on first use): the demo's learning curve, and for
`popo report` curves with shaded confidence intervals, side-by-side diagnostic panels and a forest plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], path: Path, start_acc: float | None) -> None:
    """The demo's figure: held-out greedy accuracy against rollouts sampled, one line per method."""
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    _plt().close(fig)


def plot_forest(rows: list[tuple[str, list[tuple[float, float]]]], labels: list[str], path: Path, *,
                start: list[float | None], limits: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Per variant, mean +- CI of each metric in its own panel (a "forest plot"), the bars clipped to
    `limits`; a dotted line marks the warmed-up start."""
    plt = _plt()
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
