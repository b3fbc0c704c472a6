"""`popo demo` end to end on a very small budget: the report and results are written, the diagnostics are in
it, and training the methods side by side in two processes gives exactly what one process gives."""

import json
from pathlib import Path

import pytest

from popo.study.demo import LEARNING_RATES, METHODS, RESERVED, demo_overrides, run_demo
from test_issue37_reports import table_problems

TIMING = ("wall_s", "train_s")


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.mktemp("demo-cache")
    return [f"testbed.cache_dir={cache}", "testbed.warmup_steps=12", "testbed.warmup_batch=16", "train.steps=2",
            "train.eval_every=1", "train.diag_every=1", "data.eval_size=12", "rollout.prompts_per_step=4",
            "rollout.group_size=4", "train.progress=false", "train.tensorboard=false"]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in rows]


def test_the_demo_runs_countdown_and_each_method_at_its_tuned_rate():
    full = demo_overrides(quick=False)
    assert "testbed.task=countdown" in full and "testbed.numbers=3" in full and "testbed.max_number=20" in full
    assert "testbed.task=countdown" in demo_overrides(quick=True)
    assert not any(o.startswith("optim.lr=") for o in full)  # per method, from the study's tuning
    assert set(LEARNING_RATES) == set(METHODS)


def test_the_demo_evaluates_on_its_own_split_disjoint_from_the_tests_and_never_trained_on():
    """`testbed.reserved=demo:500,v4-test:1500` (study v4 uses the same string) and `data.eval_source=testbed:demo`:
    the demo's 500 problems are none of study v3's test or validation problems, nor study v4's test, nor a
    training prompt, and it evaluates every 100 of its 500 steps (the trade-off figure's points)."""
    from popo.config import load_config
    from popo.data.prepare import testbed_examples

    full = demo_overrides(quick=False)
    assert RESERVED == "demo:500,v4-test:1500" and f"testbed.reserved={RESERVED}" in full
    assert "data.eval_source=testbed:demo" in full and "train.eval_every=100" in full
    config = load_config(None, full)
    demo = {e.answer for e in testbed_examples(config, config.data.eval_source, split="validation")}
    assert len(demo) == 500
    for other in ("testbed:test", "testbed:validation", "testbed:v4-test", "testbed:train"):
        assert not demo & {e.answer for e in testbed_examples(config, other, split="validation")}, other
    quick = load_config(None, demo_overrides(quick=True))
    assert quick.data.eval_source == "testbed:demo"
    assert len(testbed_examples(quick, quick.data.eval_source, split="validation")) == quick.data.eval_size


def test_the_demo_rates_are_the_ones_study_v3_chose_on_validation():
    """Each method's rate is study v3's 3-seed choice on validation (tuning.json), inside its grid."""
    tuning = Path(__file__).resolve().parents[1] / "docs" / "results" / "study_v3" / "countdown" / "tuning"
    chosen = json.loads((tuning / "tuning.json").read_text())
    assert chosen["metric"] == "validation avg@16"
    assert {m: chosen[m]["chosen"] for m in METHODS} == LEARNING_RATES
    assert not any(chosen[m]["at_edge"] for m in METHODS)  # each rate lies inside its grid


@pytest.mark.slow
def test_side_by_side_equals_one_process_and_the_report_has_the_diagnostics(tmp_path, tiny_demo, one_thread):
    logged: list[str] = []
    one = run_demo(tmp_path / "one", quick=True, extra=tiny_demo, workers=1, log=logged.append)
    two = run_demo(tmp_path / "two", quick=True, extra=tiny_demo, workers=2, log=lambda _: None)
    assert [r["method"] for r in one] == ["warmed-up start", *METHODS]
    assert without_timing(one) == without_timing(two)
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["rows"][1]["method"] == "popo"
    report = (tmp_path / "two" / "report.md").read_text()
    assert "smoke test" in report and "popo − grpo" in report
    # the movement table from the per-problem outcomes: its means are the table's end minus start
    start, popo_row = one[0], one[1]
    moved = results["movement"]["popo − start"]
    assert moved["greedy"]["estimate"] == pytest.approx(popo_row["greedy_acc"] - start["greedy_acc"], abs=1e-9)
    assert moved["avg"]["estimate"] == pytest.approx(popo_row["avg@4"] - start["avg@4"], abs=1e-9)
    assert moved["avg"]["low"] <= moved["avg"]["estimate"] <= moved["avg"]["high"]
    assert "side by side in 2 processes" in report and "countdown with 3 numbers" in report
    assert "| popo |" in report and "| grpo |" in report and "cos(full, NLL)" in report
    assert (tmp_path / "one" / "learning_curve.png").is_file() and (tmp_path / "one" / "tradeoff.png").is_file()
    # the trade-off: every evaluation of each method (steps 0, 1, 2), from one shared start
    paths = results["trajectories"]
    assert [p["step"] for p in paths["popo"]] == [p["step"] for p in paths["grpo"]] == [0, 1, 2]
    assert paths["popo"][0] == paths["grpo"][0]
    assert paths["popo"][-1]["avg"][0] == pytest.approx(popo_row["avg@4"], abs=1e-9)
    assert "From the shared start (avg@4" in report and "![trade-off](tradeoff.png)" in report
    assert table_problems(report) == []
    popo = one[1]
    assert popo["lr"] == float(LEARNING_RATES["popo"]) and "grad_share/nll" in popo["diagnostics"]
    assert any(f"== popo: 2 steps x 4 prompts x 4 rollouts, lr {popo['lr']:g}" in line for line in logged)
