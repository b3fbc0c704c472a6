"""The "Paired comparisons" section of a study report: every method against each baseline, paired by seed, with
Holm's correction over each metric's differences and over its TOSTs, and the per-problem tables."""

from __future__ import annotations

from pathlib import Path

from popo.step_log import SAMPLE_OUTCOMES_KEY
from popo.study.outcomes import outcome_section
from popo.study.run_records import final_eval, start_evaluations
from popo.study.runs import Study
from popo.study.stats import Interval, equivalence_test, holm, paired_test


def _signed(ci: Interval) -> str:
    if ci.half_width != ci.half_width:
        return f"{ci.mean:+.3f}"
    return f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


EQUIVALENCE_MARGIN = 0.02
"""TOST margin: "equivalent" claims |difference| < 0.02 (two points of accuracy) at the 5% level."""
PRIMARY = ("popo", "grpo")
"""The pre-declared primary comparison (treatment, baseline): reported without multiplicity correction."""


def _p(value: float) -> str:
    return "-" if value != value else "<0.001" if value < 0.001 else f"{value:.3f}"


def paired_table(runs: dict[str, dict[int, list[dict]]], baseline: str, metrics: list[str]) -> list[str]:
    """Every variant against `baseline`, paired by seed. For each metric the rows form one family whose
    p-values are Holm-corrected (the primary comparison, `PRIMARY`, keeps its raw p); a difference is read
    as higher or lower when the corrected p < 0.05, as equivalent when TOST rejects a difference of
    `EQUIVALENCE_MARGIN` or more after Holm's correction over the metric's TOSTs (a second family), else as
    inconclusive."""
    header = "| variant | seeds | " + " | ".join(f"Δ {m} [95% CI] | p (Holm) | d_z" for m in metrics) + " | reading |"
    lines = [header, "|" + " --- |" * (3 + 3 * len(metrics))]
    base = runs[baseline]
    rows = [(name, sorted(set(by_seed) & set(base))) for name, by_seed in runs.items() if name != baseline]
    rows = [(name, seeds) for name, seeds in rows if seeds]
    cells: dict[str, list[str]] = {name: [] for name, _ in rows}
    readings: dict[str, list[str]] = {name: [] for name, _ in rows}
    for m in metrics:
        values = {name: ([final_eval(runs[name][s])[m] for s in seeds], [final_eval(base[s])[m] for s in seeds])
                  for name, seeds in rows}
        tests = {name: paired_test(*values[name]) for name, _ in rows}
        family = [name for name, _ in rows if (name, baseline) != PRIMARY]
        adjusted = dict(zip(family, holm([tests[n].p_value for n in family])[0]))
        tosts = {name: equivalence_test(*values[name], margin=EQUIVALENCE_MARGIN) for name, _ in rows}
        tost_holm = dict(zip([n for n, _ in rows], holm([tosts[n].p_value for n, _ in rows])[0]))
        for name, seeds in rows:
            result = tests[name]
            p = result.p_value if (name, baseline) == PRIMARY else adjusted[name]
            dz = "-" if result.d_z != result.d_z else f"{result.d_z:+.2f}"
            cells[name].append(f"{_signed(result.ci)} | {_p(p)}{' (primary)' if (name, baseline) == PRIMARY else ''}"
                               f" | {dz}")
            if len(seeds) < 2:
                readings[name].append(f"{m}: one seed, no test")
            elif p < 0.05:
                readings[name].append(f"{m}: {'higher' if result.mean_diff > 0 else 'lower'}")
            elif tost_holm[name] < 0.05:
                tost_p = _p(tost_holm[name])
                readings[name].append(f"{m}: equivalent within ±{EQUIVALENCE_MARGIN} "
                                      f"(TOST Holm p {tost_p if tost_p.startswith('<') else '= ' + tost_p})")
            else:
                readings[name].append(f"{m}: inconclusive")
    for name, seeds in rows:
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells[name]) + f" | {'; '.join(readings[name])} |")
    return lines


def paired_section(out: Path, study: Study, runs: dict[str, dict[int, list[dict]]], baselines: list[str],
                   metrics: list[str]) -> str:
    """The "Paired comparisons" section: how to read it, one `paired_table` per baseline, per-problem tables."""
    paired = []
    for b in baselines:
        paired += [f"\nAgainst **{b}** (variant minus {b}, paired by seed):\n", *paired_table(runs, b, metrics)]
    run_dirs = {v.name: {s: out / v.dirname / f"seed-{s}" for s in study.seeds} for v in study.variants}
    return f"""## Paired comparisons

Same seeds, same prompts, same initial checkpoint: differences with a 95% CI over seeds, paired t-test
p-value and Cohen's d_z (mean difference / SD of the differences; not given below 3 seeds). The primary
comparison, declared before any run, is popo − grpo (its raw p is shown); in every table the other
comparisons of a metric form one family whose p-values are Holm-corrected. A difference is read as
higher or lower at a corrected p < 0.05, as **equivalent** only when a TOST rejects a difference of
±{EQUIVALENCE_MARGIN} or more at the 5% level after Holm's correction over the metric's TOSTs (a family of
its own), and otherwise as **inconclusive**: p ≥ 0.05 alone never reads as "matches". An equivalence means
something only if the baseline itself moved from the start by more than the margin (a positive control):
compare its row with the start's above before reading one.
{chr(10).join(paired)}
{outcome_section(out, run_dirs, baselines, [r[SAMPLE_OUTCOMES_KEY] for r in start_evaluations(runs)
                                             if SAMPLE_OUTCOMES_KEY in r])}

"""
