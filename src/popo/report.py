"""Demo report: a results table (console and markdown) and a learning-curve plot."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import transformers


def results_table(rows: list[dict[str, Any]], k: int) -> str:
    header = (f"| method | greedy acc | avg@{k} | pass@{k} | train reward | wall time (s) | "
              "trained rollouts | trained tokens |")
    lines = [header, "|" + " --- |" * 8]
    for r in rows:
        def num(key: str, fmt: str = "{:.3f}") -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['method']} | {num('greedy_acc')} | {num(f'avg@{k}')} | {num(f'pass@{k}')} | "
                     f"{num('reward_mean')} | {num('wall_s', '{:.1f}')} | {num('trained_rollouts', '{:.0f}')} | "
                     f"{num('trained_tokens', '{:.0f}')} |")
    return "\n".join(lines)


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], path: Path, start_acc: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def environment_line() -> str:
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, {platform.machine()} with {torch.get_num_threads()} threads")
