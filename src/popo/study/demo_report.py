"""The `popo demo` report: its tables (results, movement from the start, diagnostics), the sentences that read
them (which depend on the numbers: a method that fell is not said to learn) and report.md itself.
`popo.study.demo` trains the methods and computes what these functions print; the line helpers shared with
`popo report` live in `popo.study.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from popo.config import Config
from popo.study.report import environment_line, task_line

RATES_FROM = "on this task's validation split by study v3 (best mean final avg@16 over its three tuning seeds)"
CONTROL_LIFT = 0.10
"""Study v3's positive-control bar on avg@k (docs/results/study_v3/preregistration.md); the report says who clears it."""
GAP = "popo − grpo"
"""The movement table's row of the gap between the methods at the end."""


def methods_of(lifts: dict) -> list[str]:
    """The methods of a movement table, in its order (its rows "METHOD − start")."""
    return [label.removesuffix(" − start") for label in lifts if label.endswith(" − start")]


def results_table(rows: list[dict[str, Any]], k: int) -> str:
    """The demo's results table (markdown, also printed to the console): one row per method."""
    header = (f"| method | greedy acc | avg@{k} | pass@{k} | train reward | wall time (s) | "
              "rollouts through forward+backward | completion tokens through forward+backward |")
    lines = [header, "|" + " --- |" * 8]
    for r in rows:
        def num(key: str, fmt: str = "{:.3f}") -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['method']} | {num('greedy_acc')} | {num(f'avg@{k}')} | {num(f'pass@{k}')} | "
                     f"{num('reward_mean')} | {num('wall_s', '{:.1f}')} | {num('forwarded_rollouts', '{:.0f}')} | "
                     f"{num('forwarded_tokens', '{:.0f}')} |")
    return "\n".join(lines)


def movement_table(lifts: dict, k: int) -> str:
    names = {"greedy": "greedy acc", "avg": f"avg@{k}", "pass": f"pass@{k}"}
    metrics = [m for m in names if m in next(iter(lifts.values()))]
    lines = ["| difference | " + " | ".join(f"Δ {names[m]} [95% interval over problems]" for m in metrics) + " |",
             "|" + " --- |" * (1 + len(metrics))]
    for label, by in lifts.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{by[m]['estimate']:+.3f} [{by[m]['low']:+.3f}, {by[m]['high']:+.3f}]" for m in metrics) + " |")
    return "\n".join(lines)


def demo_diagnostics(rows: list[dict]) -> str:
    """The demo's diagnostics table (markdown): one row per method that logged diagnostics. A literal `|` in a
    cell is escaped (`\\|`), else it would split the cell."""
    columns = [("distinct_positive_frac", "distinct / positives"), ("multi_distinct_frac", "prompts with 2+ distinct"),
               ("weight_dev_uniform", r"\|w − uniform\|"), ("grad_share/nll", "NLL share"),
               ("grad_share/sim", "sim share"), ("grad_share/ent", "ent share"), ("grad_share/pg", "PG share"),
               ("grad_cos/nll", "cos(full, NLL)"), ("grad_cos_positive_nll", "cos(full, positive NLL)")]
    rows = [r for r in rows if r.get("diagnostics")]
    columns = [(k, label) for k, label in columns if any(k in r["diagnostics"] for r in rows)]
    lines = ["| method | " + " | ".join(label for _, label in columns) + " |", "|" + " --- |" * (1 + len(columns))]
    for r in rows:
        d = r["diagnostics"]
        lines.append(f"| {r['method']} | " + " | ".join(f"{d[k]:.3f}" if k in d else "-" for k, _ in columns) + " |")
    return "\n".join(lines) if rows else "(no diagnostics logged: train.diag_every=0)"


def verdict(difference: dict) -> str:
    """How a difference's 95% interval reads: "rose", "fell" or "did not move beyond the noise"."""
    return "rose" if difference["low"] > 0 else "fell" if difference["high"] < 0 else "did not move beyond the noise"


def learning_metric(lifts: dict, k: int) -> tuple[str, str]:
    """(key, name) of the metric that says whether a method learned: avg@k when sampled, else greedy accuracy."""
    return ("avg", f"avg@{k}") if "avg" in next(iter(lifts.values())) else ("greedy", "greedy accuracy")


def movement_reading(lifts: dict, k: int) -> str:
    """Plain sentences for the movement table: whether each method's interval clears the start, and the gap."""
    lines = []
    for method in methods_of(lifts):
        by = lifts[f"{method} − start"]
        parts = [f"{name} {verdict(by[m])} ({by[m]['estimate']:+.3f})" for m, name in
                 (("avg", f"avg@{k}"), ("greedy", "greedy accuracy"), ("pass", f"pass@{k}")) if m in by]
        lines.append(f"- {method.upper()}: " + ", ".join(parts) + ".")
    methods = methods_of(lifts)
    if "avg" in lifts[f"{methods[0]} − start"]:
        clears = [m.upper() for m in methods if lifts[f"{m} − start"]["avg"]["estimate"] >= CONTROL_LIFT]
        lines.append(f"- Study v3's positive-control bar (avg@{k} at least +{CONTROL_LIFT:.2f} over the start): "
                     + (f"cleared by {' and '.join(clears)}" if clears else "cleared by neither method")
                     + (f", not by {' and '.join(m.upper() for m in methods if m.upper() not in clears)}"
                        if clears and len(clears) < len(methods) else "") + " at this budget.")
    gap = lifts[GAP]
    metric, name = learning_metric(lifts, k)
    lines.append(f"- POPO − GRPO at the end: {gap[metric]['estimate']:+.3f} on {name} "
                 f"(standard error of the gap over problems {gap[metric]['se']:.3f}; one seed, so seed-to-seed "
                 "variation, which is larger, is not in it).")
    return "\n".join(lines)


def tradeoff_sentence(trajectories: dict[str, list[dict]], k: int) -> str:
    """One sentence: where each method ended in the (avg@k, pass@k) plane, from the shared start, and how the
    two end points sit against each other."""
    def at(p: dict) -> str:
        return f"(avg@{k} {p['avg'][0]:.3f}, pass@{k} {p['pass'][0]:.3f})"

    ends = {m: points[-1] for m, points in trajectories.items()}
    start = next(iter(trajectories.values()))[0]
    where = " and ".join(f"{m.upper()} at {at(p)} after {p['step']} steps" for m, p in ends.items())
    (a, pa), (b, pb) = list(ends.items())[:2]
    further = a if pa["avg"][0] > pb["avg"][0] else b
    higher = a if pa["pass"][0] > pb["pass"][0] else b
    if further != higher:
        how = (f"{further.upper()} went further along avg@{k} and kept less pass@{k}, {higher.upper()} the "
               "reverse: they ended at different points of the trade-off")
    else:
        how = f"{further.upper()} ended higher on both (no trade-off between the two end points)"
    return f"From the shared start {at(start)}, {where}: {how}."


def limits_text(lifts: dict, k: int) -> str:
    """What one seed can and cannot show; whether "both methods learn" is said depends on the movement."""
    key, name = learning_metric(lifts, k)
    verdicts = {m: verdict(lifts[f"{m} − start"][key]) for m in methods_of(lifts)}
    if all(v == "rose" for v in verdicts.values()):
        learned = "that both methods learn on this task from this start"
    else:
        learned = (f"how far each method moved from this start (here {name}: "
                   + ", ".join(f"{m.upper()} {v}" for m, v in verdicts.items()) + ")")
    return f"""What one seed can show: {learned}, what each costs (rows and tokens through the forward and backward
pass, seconds), and whether POPO's weights and similarity term had anything to act on. What it cannot show:
which method is better; the gap's interval counts only the demo's problems, and seeds differ by more. Study v3
(`docs/results/study_v3/`, several seeds, rates chosen on validation, a positive control first) is the tool
for that."""


SMOKE_NOTE = ("**This is a smoke test of the pipeline** (a few steps on an easier task, with the full demo's "
              "rates): its numbers mean nothing, and the methods may end below their start. `make demo` is the "
              "demonstration.\n\n")


def setup_paragraph(config: Config, rows: list[dict]) -> str:
    """The report's opening paragraph: task, model, shared start, budget, learning rates and evaluation."""
    k = config.train.eval_samples
    rates = ", ".join(f"{r['method']} {r['lr']:g}" for r in rows if "lr" in r)
    return f"""Task: {task_line(config)} (reward 1 only for a
right, well-formed answer). Model: the embedded tiny Qwen2, warmed up by imitation on one solution
drawn at random per example from all of a problem's solutions (shipped with popo: every machine starts
from the same weights). Both methods start from that checkpoint and sample the same number of rollouts
({config.train.steps} steps x {config.rollout.prompts_per_step} prompts x {config.rollout.group_size}), each at
the learning rate chosen for it {RATES_FROM} ({rates}).
Evaluation: the demo's own held-out split, which no study reads: {config.data.eval_size} countdown problems set
aside from the end of the RL-train split (`testbed.reserved={config.testbed.reserved}`,
`data.eval_source={config.data.eval_source}`), which no demo run trains on and no study evaluates on or
chooses with (study v3's runs, which predate the reservation, had them among their training prompts; the demo
starts from the shipped warm start, which never saw them). Greedy accuracy, and avg@{k} / pass@{k} from {k}
samples at temperature {config.rollout.temperature}, at step 0 and every {config.train.eval_every} steps."""


def movement_section(lifts: dict | None, k: int, eval_size: int) -> str:
    """How far each method moved from the start and the gap between them: `movement_table` and its reading
    ("" without `lifts`)."""
    if not lifts:
        return ""
    return f"""How far each method moved from the start, and the gap between them (means over the
{eval_size} held-out problems, each method's end minus the start on the same problems; 95% percentile
bootstrap intervals over problems):

{movement_table(lifts, k)}

{movement_reading(lifts, k)}
"""


def curves_section(trajectories: dict[str, list[dict]] | None, k: int) -> str:
    """The trade-off figure with the sentence that says where each method ended (when the evaluations sampled),
    then the learning curve."""
    curve = "![learning curve](learning_curve.png)\n"
    if not trajectories or not all("avg" in p for points in trajectories.values() for p in points):
        return curve
    return f"""The trade-off: every evaluation of each method in the (avg@{k}, pass@{k}) plane, in step order
(sampled accuracy against breadth; one seed, bars are 95% intervals over problems).
{tradeoff_sentence(trajectories, k)}

![trade-off](tradeoff.png)

{curve}"""


def speed_note(rows: list[dict]) -> str:
    """POPO's training time against GRPO's and the rows each forwarded ("" unless both ran and GRPO's time is
    known)."""
    by = {r["method"]: r for r in rows}
    if not ("popo" in by and "grpo" in by and by["grpo"].get("train_s")):
        return ""
    popo, grpo = by["popo"], by["grpo"]
    return (f"POPO's training phase took {popo['train_s']:.1f}s against GRPO's {grpo['train_s']:.1f}s "
            f"({popo['train_s'] / grpo['train_s']:.2f}x): POPO forwards and back-propagates only its positive "
            f"rollouts ({popo['forwarded_rollouts']:.0f} rows against GRPO's {grpo['forwarded_rollouts']:.0f} of "
            f"the {grpo['trained_rollouts']:.0f} in its batches: GRPO skips the rows whose advantage is exactly "
            "zero, those of prompts whose rollouts all got the same reward).\n")


def diagnostics_section(rows: list[dict]) -> str:
    """What the diagnostics measure, then the `demo_diagnostics` table."""
    return f"""Did the methods' components act? Means over the steps with diagnostics (`popo.diagnostics`): the share
of distinct strings among a prompt's positives, the share of prompts whose positives differ at all (both
over prompts with two or more positives), POPO's mean absolute difference between its softmax weights and
uniform weights there, each loss term's share of the gradient norm, and the cosine between the full gradient
and the NLL-only one.

{demo_diagnostics(rows)}"""


def command_paragraph(overrides: list[str], total_s: float, quick: bool, workers: int, warmup_s: float) -> str:
    """The command that made the report, its wall time (the warm-up's part and where the warm start came
    from), how the methods shared the machine, and the machine."""
    warm_start = ("the shipped warm start, or the cached copy" if warmup_s < 20 else
                  "built here: this configuration has no shipped warm start; later runs reuse the cached model")
    trained = f"side by side in {workers} processes" if workers > 1 else "one after the other"
    return f"""Command: `popo demo{' --quick' if quick else ''}` (settings: `{' '.join(overrides)}`, then per method
`algo.name` and `optim.lr`). Total wall time {total_s:.0f}s, of which {warmup_s:.0f}s to get the warmed-up
model ({warm_start});
the methods trained {trained},
on {environment_line()}."""


def write_demo_report(out: Path, table: str, config: Config, overrides: list[str], rows: list[dict],
                      total_s: float, quick: bool, workers: int = 1, warmup_s: float = 0.0,
                      lifts: dict | None = None, trajectories: dict[str, list[dict]] | None = None) -> None:
    """The demo's report.md: task, budget, the results table, how far each method moved, the trade-off, the
    training-time comparison, the diagnostics and the command."""
    k = config.train.eval_samples
    text = f"""# popo demo{' (quick)' if quick else ''}

{SMOKE_NOTE if quick else ''}{setup_paragraph(config, rows)}

{table}

{movement_section(lifts, k, config.data.eval_size)}
{curves_section(trajectories, k)}
{speed_note(rows)}
{diagnostics_section(rows)}

{limits_text(lifts, k) if lifts else ''}

{command_paragraph(overrides, total_s, quick, workers, warmup_s)}
"""
    (out / "report.md").write_text(text)
