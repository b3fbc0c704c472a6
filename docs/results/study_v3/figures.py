"""Study v3's figures, drawn by `derive.py report` from the numbers it has just derived and the raw validation
curves, so that every point on a figure is a number of the report (or of `numbers.json`):

- ``differences.png``: every arm − baseline on the primary metric with its two-way bootstrap interval, the
  pre-registered equivalence margin shaded;
- ``pass_at_k.png``: pass@k against k (log scale) for the start and every arm, from the deepest exploration
  table the report has;
- ``validation.png``: the tuning phase on validation, the final primary metric against the learning rate per
  arm (mean over the tuning seeds) and, at each arm's chosen rate, the curve over steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from popo.study.plots import pyplot as _plt


def _save(fig, path: Path) -> None:
    # no timestamp or version in the file, so that re-deriving unchanged data rewrites identical bytes
    fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)


def differences(numbers: dict, plan: dict, path: Path) -> None:
    plt = _plt()
    arms = list(numbers["comparisons"])
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(arms) + 1.6))
    ys = np.arange(len(arms))[::-1]
    for y, arm in zip(ys, arms):
        c = numbers["comparisons"][arm]
        ax.errorbar([c["estimate"]], [y], xerr=[[c["estimate"] - c["low"]], [c["high"] - c["estimate"]]],
                    fmt="o", markersize=5, capsize=3, color="C0" if arm == plan["primary"][0] else "C7")
    margin = plan["margin"]
    ax.axvspan(-margin, margin, color="C2", alpha=0.12, label=f"equivalence margin ±{margin:.3f}")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(arms)
    ax.set_xlabel(f"{plan['metric']}@{plan['k']}: arm − {plan['baseline']} (test; 95% interval over seeds x problems)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def pass_at_k(table: dict, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, curve in table.items():
        ks = [int(j) for j in curve]
        style = {"color": "grey", "linestyle": ":"} if arm == "start" else {}
        ax.plot(ks, list(curve.values()), marker="o", markersize=3, label=arm, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (unbiased estimate)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def validation(curves: list[dict], tuning: dict, task: str, path: Path) -> None:
    """Left: final validation avg@k against the rate (mean over seeds). Right: avg@k over steps at the chosen
    rate (mean over seeds, with every seed's line faint). The start is step 0 of any run."""
    plt = _plt()
    rows = [c for c in curves if c["task"] == task and c["split"] == "validation" and c["avg"] != ""]
    arms = [a for a in tuning if isinstance(tuning[a], dict) and "chosen" in tuning[a]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    start = [c["avg"] for c in rows if c["step"] == 0]
    for i, arm in enumerate(arms):
        rates = list(tuning[arm]["means"])
        left.plot([float(r) for r in rates], list(tuning[arm]["means"].values()), marker="o", color=f"C{i}",
                  label=f"{arm} (chose {tuning[arm]['chosen']})")
        name = f"{arm} lr={tuning[arm]['chosen']}"
        by_seed: dict[int, list[tuple[int, float]]] = {}
        for c in rows:
            if c["method"] == name:
                by_seed.setdefault(c["seed"], []).append((c["step"], c["avg"]))
        lines = [sorted(points) for points in by_seed.values()]
        for points in lines:
            right.plot(*zip(*points), color=f"C{i}", alpha=0.25, linewidth=0.8)
        steps = sorted({s for points in lines for s, _ in points})
        mean = [np.mean([dict(points)[s] for points in lines if s in dict(points)]) for s in steps]
        right.plot(steps, mean, marker="o", color=f"C{i}", label=f"{name} ({len(lines)} seeds)")
    for ax in (left, right):
        if start:
            ax.axhline(float(np.mean(start)), color="grey", linestyle=":", linewidth=1, label="start")
        ax.grid(alpha=0.3)
        ax.set_ylabel("validation avg@k")
    left.set_xscale("log")
    left.set_xlabel("learning rate (final value, mean over tuning seeds)")
    right.set_xlabel("step (at the chosen rate)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    _save(fig, path)


def draw(folder: Path, numbers: dict, plan: dict, curves: list[dict], tuning: dict | None) -> list[str]:
    """Every figure the data supports, written into `folder`; returns the report's lines that show them."""
    lines = []
    if "comparisons" in numbers:
        differences(numbers, plan, folder / "differences.png")
        lines.append(f"![every arm − {plan['baseline']} on test](differences.png)")
    else:  # no comparison is reported, so none is drawn (nor left over from an earlier report)
        (folder / "differences.png").unlink(missing_ok=True)
    deep = numbers.get("exploration_deep") or numbers["exploration"]
    k = max(int(j) for curve in deep.values() for j in curve)
    scope = "on the exploration's test problems" if "exploration_deep" in numbers else "on the test split"
    pass_at_k(deep, f"pass@k up to {k}, {scope}", folder / "pass_at_k.png")
    lines.append("![pass@k against k](pass_at_k.png)")
    if curves and tuning:
        validation(curves, tuning, plan["task"], folder / "validation.png")
        lines.append("![the tuning phase on validation](validation.png)")
    return lines
