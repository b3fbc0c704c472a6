"""The frontier section of a study report, from a real (tiny) `popo compare` folder."""

import numpy as np

from conftest import WARM_TESTBED

from popo.study import frontier_report
from popo.study.frontier import Trajectories


def test_a_compare_folder_gives_trajectories_a_table_and_a_figure(tmp_path, warm_testbed_cache):
    from popo.study.runs import method_variants, run_study

    overrides = ["model.name=testbed", "data.source=testbed", "data.eval_source=testbed", "testbed.task=addition", "testbed.reserved=",
                 f"testbed.cache_dir={warm_testbed_cache}", *WARM_TESTBED, "rollout.max_new_tokens=12",
                 "train.steps=4", "train.eval_every=2", "data.eval_size=12", "train.eval_samples=4",
                 "rollout.prompts_per_step=4", "rollout.group_size=4", "train.save_every=0", "optim.lr=1e-3"]
    run_study(tmp_path, method_variants(["popo", "grpo"]), [0, 1], overrides=overrides, workers=1, threads=1,
              log=lambda message: None)
    sets = frontier_report.study_trajectories(tmp_path)
    assert sorted((t.method, len(t.seeds), t.steps.tolist()) for t in sets) == [("grpo", 2, [0, 2, 4]),
                                                                                 ("popo", 2, [0, 2, 4])]
    assert all(t.correct.shape == (2, 3, 12) and t.compute["rows"][:, 0].tolist() == [0, 0] for t in sets)
    grpo = next(t for t in sets if t.method == "grpo")
    assert (np.diff(grpo.compute["rows"], axis=1) == 32).all()  # GRPO trains every row: 2 steps x 4 prompts x 4
    lines = frontier_report.frontier_lines(sets, "grpo", resamples=50)
    assert any(line.startswith("| popo |") and "equal rows" not in line for line in lines)
    assert any("Matched comparisons against grpo" in line for line in lines)
    header = next(line for line in lines if "at equal rows" in line)
    assert all(line.count("|") == header.count("|") for line in lines[lines.index(header):] if line.startswith("| popo"))
    path = frontier_report.draw_frontier(sets, tmp_path / "frontier.png")
    assert path is None or path.stat().st_size > 0
    # `popo report` (and compare's report) carries the section
    from popo.study.report import write_study_report

    text = write_study_report(tmp_path, log=lambda message: None).read_text()
    section = text[text.index("## Frontier"):text.index("## Training diagnostics")]
    assert "Matched comparisons against grpo" in section and "| popo | lr=1e-3 |" in section


def test_no_baseline_runs_gives_the_table_without_comparisons():
    t = Trajectories("popo", "lr=1e-4", (0,), np.array([0, 10]), np.array([[[1, 2], [3, 4]]], dtype=float), 4,
                     {n: np.array([[0.0, 5.0]]) for n in ("rows", "tokens", "seconds")})
    lines = frontier_report.frontier_lines([t], "grpo")
    assert lines[2].startswith("| popo | lr=1e-4 | 1 | 2 | 0.875 |") and not any("Matched" in x for x in lines)
