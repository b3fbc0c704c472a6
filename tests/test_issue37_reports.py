"""The reports' defects of issue 37 and the demo's trade-off (issue 35, item 5), on fixtures written here (no
training): every figure a study report links is written (sweeps included, `popo report` too), every markdown
table of the generated reports has one cell count, a compare report gives one start, the diagnostics figure is
a grid legible at page width, and the demo's sentences follow its numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path


from popo.step_log import OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY

K = 8
SEED_STARTS = {0: [0, 1, 8, 3, 0, 2], 1: [1, 1, 6, 0, 0, 0]}
"""Correct samples (of K) per problem at step 0, by seed: the seeds sample the start differently."""
START_GREEDY = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
"""The start's greedy outcomes, the same under every seed (greedy decoding draws nothing)."""


def evaluation(correct: list[int], greedy: list[float]) -> dict:
    return {"eval/greedy_acc": sum(greedy) / len(greedy), f"eval/avg@{K}": sum(correct) / (K * len(correct)),
            f"eval/pass@{K}": sum(c > 0 for c in correct) / len(correct), OUTCOMES_KEY: greedy,
            SAMPLE_OUTCOMES_KEY: correct}


def write_run(run_dir: Path, seed: int, shift: int) -> None:
    """A finished 4-step run: evaluations at steps 0, 2 and 4 (step 0 the start as `seed` samples it)."""
    run_dir.mkdir(parents=True)
    start = SEED_STARTS[seed]
    records = [{"step": 0, "rollouts": 0, **evaluation(start, START_GREEDY)}]
    for step in range(1, 5):
        record = {"step": step, "rollouts": 4, "rollouts_total": 4 * step, "trained_rollouts": 2,
                  "forwarded_rollouts": 2, "trained_tokens": 20, "time/train": 0.1, "time/generate": 0.2,
                  "pass_rate": 0.3 + 0.01 * step, "entropy": 1.0 - 0.1 * step, "distinct_positive_frac": 0.5,
                  "grad_share/nll": 0.8, "implicit_neg_logprob_delta": -0.01}
        if step % 2 == 0:
            correct = [min(K, c + shift * step // 2 + (seed + step) * (i % 2)) for i, c in enumerate(start)]
            record.update(evaluation(correct, [float(c > 3) for c in correct]))
        records.append(record)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    final = records[-1][SAMPLE_OUTCOMES_KEY]
    problems = {"ids": [f"p{i}" for i in range(len(final))], "k": K, "greedy": records[-1][OUTCOMES_KEY],
                "correct": final, "distinct_correct": [min(c, 2) for c in final]}
    (run_dir / "problems.json").write_text(json.dumps(problems))
    (run_dir / "done.json").write_text(json.dumps({"variant": run_dir.parent.name, "seed": seed, "sft": False,
                                                    "wall_s": 1.0, "initial_checkpoint": "cache/testbed-x",
                                                    "threads": 1}))


def write_study(out: Path, names: list[str]) -> Path:
    """A study folder as `popo compare`/`popo sweep` leave it, with the variants `names` over seeds 0 and 1."""
    from popo.study.runs import Variant

    variants = [Variant(name, (f"algo.name={name.split()[0]}",)) for name in names]
    out.mkdir(parents=True)
    study = {"config_path": None, "base_overrides": [f"train.eval_samples={K}", "train.steps=4",
                                                       "rollout.prompts_per_step=2", "rollout.group_size=2"],
             "variants": [{"name": v.name, "overrides": list(v.overrides), "sft": False} for v in variants],
             "seeds": [0, 1], "budget": 16, "commands": ["popo sweep --grid optim.lr=1e-3,1e-4"]}
    (out / "study.json").write_text(json.dumps(study))
    for shift, v in enumerate(variants, 1):
        for seed in (0, 1):
            write_run(out / v.dirname / f"seed-{seed}", seed, shift)
    start = SEED_STARTS[0]  # start-problems.json: the start as the smallest seed samples it
    (out / "start-problems.json").write_text(json.dumps({
        "ids": [f"p{i}" for i in range(len(start))], "k": K, "greedy": START_GREEDY,
        "correct": start, "distinct_correct": [min(c, 2) for c in start]}))
    return out


def split_cells(line: str) -> list[str]:
    """A markdown table row's cells (GFM: an unescaped `|` separates cells, `\\|` is a literal pipe)."""
    return re.split(r"(?<!\\)\|", line.strip().strip("|"))


def table_problems(markdown: str) -> list[str]:
    """Every markdown table row whose cell count differs from its table's header row."""
    problems, header = [], None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = len(split_cells(line))
        if header is None:
            header = cells
        elif cells != header:
            problems.append(f"{cells} cells, header {header}: {line}")
    return problems


def linked_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_the_table_check_can_fail():
    assert table_problems("| a | b |\n| --- | --- |\n| 1 | 2 |") == []
    assert table_problems("| a | \\|w\\| |\n| --- | --- |") == []
    assert len(table_problems("| a | |w| |\n| --- | --- |")) == 1


def test_every_figure_a_sweep_report_links_is_written_and_its_tables_are_whole(tmp_path):
    """A sweep's variants are all named "method key=value": none may be left out of the figures."""
    from popo.cli import main
    from popo.study.report import write_study_report

    out = write_study(tmp_path / "study", ["popo lr=1e-3", "popo lr=1e-4"])
    report = write_study_report(out, log=lambda _: None).read_text()
    images = linked_images(report)
    assert {"final_accuracy.png", "curve_rollouts.png", "curve_walltime.png", "diagnostics.png"} <= set(images)
    for image in images:
        assert (out / image).stat().st_size > 1000, image
    assert table_problems(report) == []
    for image in images:  # `popo report` on the folder writes them again
        (out / image).unlink()
    assert main(["report", str(out)]) == 0
    assert all((out / image).is_file() for image in images)


def test_a_compare_report_gives_one_start_the_mean_over_its_evaluations(tmp_path):
    from popo.study.report import write_study_report

    out = write_study(tmp_path / "study", ["popo", "grpo"])
    report = write_study_report(out, log=lambda _: None).read_text()
    assert table_problems(report) == [] and all((out / image).is_file() for image in linked_images(report))
    results = next(line for line in report.splitlines() if line.startswith("| *start (step 0)*"))
    pass_j = next(line for line in report.splitlines() if line.startswith("| *start* |"))
    mean_pass = sum(sum(c > 0 for c in s) / len(s) for s in SEED_STARTS.values()) / 2
    mean_avg = sum(sum(s) / (K * len(s)) for s in SEED_STARTS.values()) / 2
    results_cells = [c.strip() for c in split_cells(results)]
    assert results_cells[1] == "2"  # two evaluations: seeds 0 and 1 (each seen by two variants, counted once)
    assert results_cells[3:] == [f"{mean_avg:.3f}", f"{mean_pass:.3f}"]
    pass_cells = [c.strip() for c in split_cells(pass_j)]
    assert pass_cells[-2] == f"{mean_pass:.3f}" != f"{sum(c > 0 for c in SEED_STARTS[0]) / 6:.3f}"  # not seed 0's
    assert pass_cells[1] == "2"
    assert "yes: every run's step-0 greedy accuracy is 0.500" in report
    assert "mean over its 2 step-0 evaluation" in report and "mean over its step-0 evaluations" in report


def test_the_diagnostics_figure_is_a_grid_legible_at_page_width():
    from popo.study.plots import draw_panels, pyplot

    panels = [(f"panel {i}", {"popo": [(1, 0.1), (2, 0.2)], "grpo": [(1, 0.3), (2, 0.1)]}) for i in range(5)]
    fig = draw_panels(panels, "step")
    try:
        width, height = fig.get_size_inches()
        assert width <= 10 and height > width  # two columns of panels, three rows
        rows = {round(ax.get_position().y0, 2) for ax in fig.axes}
        assert len(rows) == 3
        spare = fig.axes[5]  # the sixth cell holds the legend, not a blank panel
        assert spare.get_legend() is not None and not spare.axison
    finally:
        pyplot().close(fig)


def trajectories(popo_end: tuple[float, float], grpo_end: tuple[float, float]) -> dict[str, list[dict]]:
    def point(step, avg, pass_):
        return {"step": step, "greedy": [0.4, 0.35, 0.45], "avg": [avg, avg - 0.02, avg + 0.02],
                "pass": [pass_, pass_ - 0.03, pass_ + 0.03]}
    start = point(0, 0.285, 0.878)
    return {"popo": [start, point(100, 0.31, 0.86), point(200, *popo_end)],
            "grpo": [start, point(100, 0.35, 0.75), point(200, *grpo_end)]}


def lifts(popo: tuple[float, float], grpo: tuple[float, float]) -> dict:
    """A movement table whose avg@k intervals are `popo` and `grpo` (low, high)."""
    def row(low, high):
        return {m: {"estimate": (low + high) / 2, "low": low, "high": high, "se": 0.01}
                for m in ("greedy", "avg", "pass")}
    return {"popo − start": row(*popo), "grpo − start": row(*grpo), "popo − grpo": row(-0.05, -0.01)}


def test_the_demo_says_both_methods_learn_only_when_both_rose():
    from popo.study.demo_report import limits_text

    assert "that both methods learn" in limits_text(lifts((0.02, 0.08), (0.05, 0.15)), 16)
    fell = limits_text(lifts((-0.08, -0.02), (-0.1, -0.01)), 16)
    assert "both methods learn" not in fell and "POPO fell, GRPO fell" in fell
    mixed = limits_text(lifts((-0.02, 0.03), (0.05, 0.15)), 16)
    assert "POPO did not move beyond the noise, GRPO rose" in mixed


def test_the_tradeoff_sentence_says_where_each_method_ended():
    from popo.study.demo_report import tradeoff_sentence

    text = tradeoff_sentence(trajectories((0.353, 0.796), (0.408, 0.598)), 16)
    assert "shared start (avg@16 0.285, pass@16 0.878)" in text
    assert "POPO at (avg@16 0.353, pass@16 0.796) after 200 steps" in text and "GRPO at (avg@16 0.408" in text
    assert "GRPO went further along avg@16 and kept less pass@16, POPO the reverse" in text
    assert "GRPO ended higher on both" in tradeoff_sentence(trajectories((0.30, 0.70), (0.40, 0.80)), 16)


def test_the_demo_figures_draw_avg_and_pass_with_intervals_and_the_shared_start():
    from popo.study.plots import draw_learning_curves, draw_tradeoff, pyplot

    fig = draw_learning_curves(trajectories((0.353, 0.796), (0.408, 0.598)), 16)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["greedy accuracy", "avg@16", "pass@16"]
        for ax in fig.axes:  # one line and one shaded 95% band per method
            assert len(ax.lines) == 2 and len(ax.collections) == 2
    finally:
        pyplot().close(fig)
    fig = draw_tradeoff(trajectories((0.353, 0.796), (0.408, 0.598)), 16)
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel().startswith("avg@16") and ax.get_ylabel().startswith("pass@16")
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["popo", "grpo", "start (step 0, shared)"]
        steps = sorted(t.get_text() for t in ax.texts if t.get_text())  # the arrows are annotations without text
        assert steps == ["100", "100", "200", "200"]  # every evaluation after the start is labelled by its step
        assert sum(1 for t in ax.texts if not t.get_text()) == 4  # an arrow from each evaluation to the next
    finally:
        pyplot().close(fig)


def test_the_demo_report_tables_are_whole_and_it_links_only_what_it_writes(tmp_path):
    from popo.config import load_config
    from popo.study.demo import demo_overrides
    from popo.study.demo_report import results_table, write_demo_report

    config = load_config(None, demo_overrides(quick=False))
    diagnostics = {"distinct_positive_frac": 0.4, "weight_dev_uniform": 0.002, "grad_share/nll": 0.8,
                   "grad_cos/nll": 0.9}
    rows = [{"method": "warmed-up start", "greedy_acc": 0.4, "avg@16": 0.285, "pass@16": 0.878},
            {"method": "popo", "lr": 1e-4, "greedy_acc": 0.45, "diagnostics": diagnostics},
            {"method": "grpo", "lr": 1e-4, "greedy_acc": 0.46, "diagnostics": {"grad_cos/nll": 1.0}}]
    write_demo_report(tmp_path, results_table(rows, 16), config, [], rows, 400.0, False, 2, 1.0,
                      lifts((0.02, 0.08), (0.05, 0.15)), trajectories((0.353, 0.796), (0.408, 0.598)))
    report = (tmp_path / "report.md").read_text()
    assert table_problems(report) == []
    assert r"\|w − uniform\|" in report
    assert set(linked_images(report)) == {"tradeoff.png", "learning_curve.png"}
    assert "the demo's own held-out split, which no study reads" in report
    assert "testbed.reserved=demo:500,v4-test:1500" in report and "every 100 steps" in report
