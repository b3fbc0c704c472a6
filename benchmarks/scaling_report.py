"""The report of benchmarks/scaling.py: TRL/ours ratios, log-log fits of each phase against completion
length and parameters, factual findings, plots (PNG) and the markdown. Pure functions of the result
dictionary that scaling.py measures; nothing here runs a model.
"""

from __future__ import annotations

import math
from pathlib import Path

import common

FRAMEWORKS = ("popo", "grpo", "trl")
PHASES = ("step", "generate", "train", "other")
CONTEXT = 1152  # max_position_embeddings: an 8-token prompt + 1024 new tokens, with room to spare


def select(rows: list[dict], order: str, **match) -> list[dict]:
    """The rows whose fields equal `match`, sorted by `order`."""
    return sorted((r for r in rows if all(r[k] == v for k, v in match.items())), key=lambda r: r[order])


def fit_exponent(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares of log y on log x: the exponent b of y ~ x^b, with the points used."""
    import numpy as np

    pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0 and y == y]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, a = np.polyfit(lx, ly, 1)
    resid = ly - (a + b * lx)
    r2 = round(1 - float((resid ** 2).sum()) / float(((ly - ly.mean()) ** 2).sum()), 3) if len(pts) > 2 else None
    last = float(math.log(pts[-1][1] / pts[-2][1]) / math.log(pts[-1][0] / pts[-2][0]))
    return {"exponent": round(float(b), 3), "r2": r2, "last_segment_exponent": round(last, 3),
            "x": [p[0] for p in pts], "y": [round(p[1], 5) for p in pts]}


def compute_fits(rows: list[dict], args) -> list[dict]:
    grid = [r for r in rows if r["part"] == "grid"]
    fits = []
    for fw in args.frameworks:
        for phase in PHASES:
            for model in args.models:
                cells = select(grid, "length", framework=fw, model=model)
                fit = fit_exponent([r["length"] for r in cells], [r[f"{phase}_s"] for r in cells])
                if fit:
                    fits.append({"framework": fw, "phase": phase, "against": "length", "at": model, **fit})
            for length in args.lengths:
                cells = select(grid, "params", framework=fw, length=length)
                fit = fit_exponent([r["params"] for r in cells], [r[f"{phase}_s"] for r in cells])
                if fit:
                    fits.append({"framework": fw, "phase": phase, "against": "params", "at": f"L={length}", **fit})
    return fits


def compute_ratios(rows: list[dict]) -> list[dict]:
    """TRL's time over popo's and over grpo's, per cell (same model, length and fraction)."""
    index = {(r["framework"], r["model"], r["length"], r["fraction"]): r for r in rows}
    out = []
    for (fw, model, length, fraction), trl in sorted(index.items(), key=lambda kv: kv[0][1:]):
        if fw != "trl":
            continue
        for ours in ("popo", "grpo"):
            r = index.get((ours, model, length, fraction))
            if r:
                out.append({"model": model, "length": length, "fraction": fraction, "ours": ours,
                            "step": trl["step_s"] / r["step_s"], "generate": trl["generate_s"] / r["generate_s"],
                            "train": trl["train_s"] / r["train_s"],
                            "peak_rss": trl["peak_rss_mb"] / r["peak_rss_mb"]})
    return out


# ---------------------------------------------------------------- text, plots
def findings(result: dict) -> list[str]:
    """Factual sentences computed from the numbers (no interpretation beyond them)."""
    lines, rows = [], [r for r in result["rows"] if r["part"] == "grid"]
    ratios = [r for r in result["ratios"] if r["fraction"] == result["settings"]["fraction"]]
    for ours in ("popo", "grpo"):
        for model in result["models"]:
            pts = select(ratios, "length", ours=ours, model=model)
            if len(pts) < 2:
                continue
            first, last = pts[0], pts[-1]
            trend = ("grows" if last["step"] > first["step"] * 1.05 else
                     "shrinks" if last["step"] < first["step"] / 1.05 else "stays about the same")
            inverted = [p["length"] for p in pts if p["step"] < 1]
            text = (f"- TRL / {ours} step time on {model}: "
                    + ", ".join(f"{p['step']:.2f} at {p['length']}" for p in pts)
                    + f" tokens ({trend} with length")
            text += f"; below 1, i.e. {ours} slower, at {', '.join(map(str, inverted))} tokens)." if inverted else ")."
            gen = ", ".join(f"{p['generate']:.2f}" for p in pts)
            train = ", ".join(f"{p['train']:.2f}" for p in pts)
            lines.append(text + f" Generate-phase ratio {gen}; train-phase ratio {train}.")
    for ours in ("popo", "grpo"):
        for length in sorted({r["length"] for r in ratios}):
            pts = [r for m in result["models"] for r in ratios if r["ours"] == ours and r["length"] == length
                   and r["model"] == m]
            if len(pts) > 1:
                lines.append(f"- TRL / {ours} step time at {length} tokens against model size: "
                             + ", ".join(f"{p['step']:.2f} on {p['model']}" for p in pts)
                             + "; peak RSS ratio " + ", ".join(f"{p['peak_rss']:.2f}" for p in pts) + ".")
    for fw in result["settings"]["frameworks"]:
        for model in result["models"]:
            cells = select(rows, "length", framework=fw, model=model)
            if cells:
                last = cells[-1]
                gen, train = (100 * last[f"{k}_s"] / last["step_s"] for k in ("generate", "train"))
                lines.append(f"- {fw} on {model} at {last['length']} tokens: generate {gen:.0f}% and train "
                             f"{train:.0f}% of the {last['step_s']:.2f} s step; peak RSS {last['peak_rss_mb']:.0f} MiB "
                             f"(fp32 KV cache of the batch {last['kv_cache_mb']:.0f} MiB).")
    target = [r for r in rows if r["framework"] == "popo" and r.get("target_forward_s", 0) > 0]
    if target:
        share = [f"{r['model']}/{r['length']}: {100 * r['target_forward_s'] / r['train_s']:.0f}%" for r in target]
        lines.append("- popo's EMA target forward as a share of its train phase: " + ", ".join(share) + ".")
    sweep = sweep_rows(result)
    for length in sorted({r["length"] for r in sweep}):
        cells = [r for r in sweep if r["length"] == length]
        if len({r["fraction"] for r in cells}) < 2:
            continue
        parts = []
        for fw in result["settings"]["frameworks"]:
            pts = sorted((r for r in cells if r["framework"] == fw), key=lambda r: r["fraction"])
            parts.append(f"{fw} train " + ", ".join(f"{r['train_s']:.3g} s ({r['forwarded_rows']:g} rows) at "
                                                    f"f={r['fraction']}" for r in pts))
        for ours in ("popo", "grpo"):
            pts = sorted((r for r in result["ratios"] if r["ours"] == ours and r["length"] == length
                          and r["model"] == result["settings"]["sweep_model"]), key=lambda r: r["fraction"])
            if pts:
                parts.append(f"TRL / {ours} step " + ", ".join(f"{p['step']:.2f} at f={p['fraction']}" for p in pts))
        lines.append(f"- Positive fraction on {result['settings']['sweep_model']} at {length} tokens: "
                     + "; ".join(parts) + ".")
    return lines


def sweep_rows(result: dict) -> list[dict]:
    s = result["settings"]
    return [r for r in result["rows"] if r["model"] == s["sweep_model"] and r["length"] in s["sweep_lengths"]]


def plots(result: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.ScalarFormatter below)

    rows = [r for r in result["rows"] if r["part"] == "grid"]
    models, fws = list(result["models"]), result["settings"]["frameworks"]
    colors = {"popo": "tab:blue", "grpo": "tab:orange", "trl": "tab:green"}
    styles = {"step": "-", "generate": "--", "train": ":"}
    written = []

    def lengths_axis(ax, values):
        ax.set_xticks(sorted(values))
        ax.set_xticks([], minor=True)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())

    def legend(ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for fw in fws:
            cells = select(rows, "length", framework=fw, model=model)
            for phase, style in styles.items():
                if cells:
                    ax.plot([r["length"] for r in cells], [r[f"{phase}_s"] for r in cells], style, marker="o",
                            color=colors[fw], label=f"{fw} {phase}")
        ax.set(xscale="log", yscale="log", xlabel="completion tokens", ylabel="seconds per step",
               title=f"{model} ({_params(result, model)})")
        lengths_axis(ax, {r["length"] for r in rows})
        ax.grid(True, which="both", alpha=0.3)
    legend(axes[0][0])
    save(fig, "scaling_length.png")

    lengths = sorted({r["length"] for r in rows})
    if len({r["model"] for r in rows}) > 1:
        fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 4.2), squeeze=False)
        for ax, length in zip(axes[0], lengths):
            for fw in fws:
                cells = select(rows, "params", framework=fw, length=length)
                for phase, style in styles.items():
                    ax.plot([r["params"] for r in cells], [r[f"{phase}_s"] for r in cells], style, marker="o",
                            color=colors[fw], label=f"{fw} {phase}")
            ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="seconds per step", title=f"{length} tokens")
            ax.grid(True, which="both", alpha=0.3)
        legend(axes[0][0])
        save(fig, "scaling_size.png")

    ratios = [r for r in result["ratios"] if r["fraction"] == result["settings"]["fraction"]]
    if ratios or rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for model, marker in zip(models, "os^"):
            for ours, style in (("popo", "-"), ("grpo", "--")):
                pts = select(ratios, "length", model=model, ours=ours)
                if pts:
                    ax1.plot([p["length"] for p in pts], [p["step"] for p in pts], style, marker=marker,
                             label=f"TRL / {ours}, {model}")
            for fw in fws:
                cells = select(rows, "length", framework=fw, model=model)
                if cells:
                    ax2.plot([r["length"] for r in cells], [r["peak_rss_mb"] for r in cells], marker=marker,
                             color=colors[fw], label=f"{fw} {model}")
        ax1.axhline(1.0, color="grey", lw=0.8)
        ax1.set(xscale="log", xlabel="completion tokens", ylabel="TRL step time / ours", title="Speed-up over TRL")
        ax2.set(xscale="log", xlabel="completion tokens", ylabel="peak RSS (MiB)", title="Peak memory per cell")
        for ax in (ax1, ax2):
            lengths_axis(ax, {r["length"] for r in rows})
            ax.grid(True, which="both", alpha=0.3)
            legend(ax)
        save(fig, "scaling_ratio_memory.png")

    sweep = sweep_rows(result)
    if len({r["fraction"] for r in sweep}) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, phase in zip(axes, ("step", "train")):
            for fw in fws:
                for length, style in zip(sorted({r["length"] for r in sweep}), ("-", "--", ":")):
                    pts = sorted((r for r in sweep if r["framework"] == fw and r["length"] == length),
                                 key=lambda r: r["fraction"])
                    ax.plot([r["fraction"] for r in pts], [r[f"{phase}_s"] for r in pts], style, marker="o",
                            color=colors[fw], label=f"{fw} {length} tokens")
            ax.set_ylim(bottom=0)
            ax.set(xlabel="positive fraction f", ylabel=f"{phase} seconds",
                   title=f"{phase} vs positive fraction ({result['settings']['sweep_model']})")
            ax.grid(True, which="both", alpha=0.3)
        legend(axes[0])
        save(fig, "scaling_fraction.png")
    return written


def _params(result: dict, model: str) -> str:
    p = result["models"][model]["params"]
    return f"{p / 1e6:.2f} M params" if p else "not run"


COLUMNS = ["model", "params", "f", "tokens", "framework", "step s", "generate s", "train s", "other s",
           "target fwd s", "rows fwd", "positive frac", "completion len", "peak RSS MiB", "KV cache MiB", "steps"]


def cells(r: dict) -> list:
    nan = float("nan")
    lens = (str(r["completion_len_min"]) if r["completion_len_min"] == r["completion_len_max"]
            else f"{r['completion_len_min']}-{r['completion_len_max']}")
    return [r["model"], f"{r['params'] / 1e6:.2f}M", r["fraction"], r["length"], r["framework"], round(r["step_s"], 4),
            round(r["generate_s"], 4), round(r["train_s"], 4), round(r["other_s"], 4),
            round(r.get("target_forward_s", nan), 4), r["forwarded_rows"], round(r["positive_fraction"], 3), lens,
            round(r["peak_rss_mb"]), round(r["kv_cache_mb"], 1),
            f"{r['measured_steps']}{'*' if r['first_step_counted'] else ''}"]


def full_length(result: dict) -> str:
    if not result["rows"]:
        return "no cell was measured"
    return "yes" if result["all_completions_full_length"] else "NO (see the completion len column)"


def _ratio(trl: dict | None, row: dict, key: str) -> float:
    return round(trl[key] / row[key], 2) if trl and row["framework"] != "trl" and row[key] > 0 else float("nan")


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = common.header("Scaling: step cost against completion length and model size (popo vs TRL)", result)
    models = ", ".join(f"`{m}` = {v['params']:,} parameters (hidden {v['hidden']}, {v['layers']} layers, MLP "
                       f"{v['intermediate']}, {v['heads']} heads, {v['kv_heads']} KV heads)"
                       for m, v in result["models"].items())
    lines += [
        f"Models: random Qwen2 on the testbed's character vocabulary, tied embeddings, max_position_embeddings "
        f"{CONTEXT}: {models}.",
        "",
        f"Settings: {s['prompts_per_step']} prompt(s) x G = {s['group_size']} = {s['rollouts_per_step']} rollouts per "
        f"step, completion limits {s['lengths']}, temperature 1, top-p 1, top-k off, fp32, KL beta 0, lr {s['lr']}, "
        f"gradient clip 1, no gradient checkpointing, {s['torch_threads']} torch thread(s) per process (the workers "
        f"run with OMP_NUM_THREADS={s['torch_threads']}), one process at a time. Every completion runs to the limit: "
        f"the end-of-sequence token is {s['eos']}; every measured completion had exactly the limit's length: "
        f"{full_length(result)}. Reward: "
        f"{s['reward']}, so the positive fraction is exactly f ({s['fraction']} in the grid"
        + (f"; {', '.join(map(str, s['sweep_fractions']))} also on `{s['sweep_model']}` at "
           f"{', '.join(map(str, s['sweep_lengths']))} tokens" if s["sweep_fractions"] else "")
        + "). Every group therefore has both rewards: no zero-advantage group arises (TRL would forward and "
        "back-propagate such rows anyway; popo's GRPO leaves zero-advantage rows out; POPO forwards only the "
        f"positives). Steps: a warm-up step per cell, dropped unless it took {s['keep_first_s']:g} s or more (then "
        "counted: marked * in the steps column), then measured steps up to "
        f"{s['max_steps']} or {s['cell_seconds']:g} s of them; medians. Whole benchmark: {result['wall_minutes']} min "
        f"(cost model predicted {result['predicted_minutes']} min).",
        "",
        "## Measurements",
        "",
        *common.table(COLUMNS, [cells(r) for r in result["rows"]]),
        "",
        "generate = popo's engine / TRL's `_generate`; train = popo's update (forward + backward, the EMA target's "
        "forward, optimizer step) plus its EMA weight update, TRL's step minus generate minus reward scoring; "
        "other = step minus generate minus train (median of step minus the medians of the phases). target fwd = "
        "popo's EMA target forward (inside train). rows fwd = rollouts through the policy's forward and backward. "
        "Peak RSS = the cell's own peak resident set (reset before the cell's trainer is built; includes the "
        "interpreter, libraries, model, optimizer state, activations). KV cache = fp32 keys and values of the "
        "batch at full length, computed.",
        "",
    ]
    if result["ratios"]:
        lines += ["## TRL / ours", "",
                  *common.table(["model", "tokens", "f", "ours", "step", "generate", "train", "peak RSS"],
                                [[r["model"], r["length"], r["fraction"], r["ours"], round(r["step"], 2),
                                  round(r["generate"], 2), round(r["train"], 2), round(r["peak_rss"], 2)]
                                 for r in result["ratios"]]),
                  "", "Each column is TRL's median divided by ours (above 1: popo faster / smaller).", ""]
    sweep = sweep_rows(result)
    if len({r["fraction"] for r in sweep}) > 1:
        trl = {(r["length"], r["fraction"]): r for r in sweep if r["framework"] == "trl"}
        lines += ["## Positive fraction", "",
                  *common.table(["tokens", "f", "framework", "step s", "train s", "rows fwd", "TRL / this step",
                                 "TRL / this train"],
                                [[r["length"], r["fraction"], r["framework"], round(r["step_s"], 4),
                                  round(r["train_s"], 4), r["forwarded_rows"],
                                  _ratio(trl.get((r["length"], r["fraction"])), r, "step_s"),
                                  _ratio(trl.get((r["length"], r["fraction"])), r, "train_s")]
                                 for r in sorted(sweep, key=lambda r: (r["length"], r["fraction"],
                                                                       FRAMEWORKS.index(r["framework"])))]), ""]
    if result["fits"]:
        lines += ["## Fitted exponents", "",
                  "Least squares of log(seconds) on log(completion tokens) per model, and on log(parameters) per "
                  "length: time ~ x^b. The last-segment exponent is the slope between the two largest x only "
                  "(where fixed per-step costs matter least).", "",
                  *common.table(["framework", "phase", "against", "at", "b", "R^2", "last segment b", "points x"],
                                [[f["framework"], f["phase"], f["against"], f["at"], f["exponent"],
                                  "-" if f["r2"] is None else f["r2"],
                                  f["last_segment_exponent"], ", ".join(f"{x:g}" for x in f["x"])]
                                 for f in result["fits"]]), ""]
    lines += ["## What the numbers show", "", *result["findings"], ""]
    if result.get("plots"):
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in result["plots"]], ""]
    skipped = result["skipped"]
    lines += ["## Skipped", ""]
    lines += ([f"- {r['framework']} {r['model']} f={r['fraction']} lengths {r['lengths']}: {r['reason']}"
               for r in skipped]
              or ["Nothing: every planned run was measured."])
    lines.append("")
    return "\n".join(lines)

