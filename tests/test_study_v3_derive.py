"""docs/results/study_v3/derive.py on a small fixture: study folders -> raw tables -> report and numbers, each
number checked against a direct computation, and a failing control that reports no comparison."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from popo.study.analysis import CURVE_FIELDS, OUTCOME_FIELDS, read_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "results" / "study_v3" / "derive.py"
K, PROBLEMS, SEEDS = 4, 30, [3, 4, 5]
PLAN = {"task": "countdown", "arms": ["grpo", "popo"], "baseline": "grpo", "primary": ["popo", "grpo"],
        "metric": "avg", "k": K, "margin": 0.05, "margin_share": 0.25, "resamples": 2000,
        "control": {"min_lift": 0.10}, "power": {"seeds": [5, 10], "problems": [30, 2000]}}


def _run(folder: Path, name: str, seed: int, split: str, counts: list[int], greedy: list[int], steps=(0, 50, 100)):
    run = folder / name / f"seed-{seed}"
    run.mkdir(parents=True)
    (run / "done.json").write_text("{}")
    source = "testbed:test" if split == "test" else "testbed"
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"eval_source": source}}))
    records = [{"step": s, "eval/greedy_acc": 0.4 + 0.001 * s, f"eval/avg@{K}": 0.3 + 0.001 * s,
                f"eval/pass@{K}": 0.8} for s in steps]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ids = [f"q{i}" for i in range(PROBLEMS)]
    (run / "problems.json").write_text(json.dumps({"ids": ids, "k": K, "greedy": greedy, "correct": counts,
                                                   "distinct_correct": [min(c, 2) for c in counts]}))


def _study(folder: Path, arms: dict, split: str, start=None):
    folder.mkdir(parents=True)
    variants = [{"name": name, "overrides": [f"algo.name={name.split()[0]}"], "sft": False} for name in arms]
    (folder / "study.json").write_text(json.dumps({"config_path": None, "base_overrides": [], "variants": variants,
                                                   "seeds": SEEDS, "budget": 1, "commands": []}))
    for name, per_seed in arms.items():
        for seed, (counts, greedy) in zip(SEEDS, per_seed):
            _run(folder, name.replace(" ", "_").replace("=", "_"), seed, split, counts, greedy)
    if start is not None:
        counts, greedy = start
        (folder / "start-problems.json").write_text(json.dumps({
            "ids": [f"q{i}" for i in range(PROBLEMS)], "k": K, "greedy": greedy, "correct": counts,
            "distinct_correct": [min(c, 2) for c in counts]}))


def _draws(rng, p_correct, p_greedy):
    return [(rng.binomial(K, p_correct, PROBLEMS).tolist(), rng.binomial(1, p_greedy, PROBLEMS).tolist())
            for _ in SEEDS]


def _derive(*args, script=SCRIPT):
    """The script's `main`, loaded from its file and run in this process (its output returned)."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert module.main([str(a) for a in args]) == 0
    return out.getvalue()


@pytest.fixture
def fixture(tmp_path):
    rng = np.random.default_rng(0)
    start = (rng.binomial(K, 0.3, PROBLEMS).tolist(), rng.binomial(1, 0.4, PROBLEMS).tolist())
    final = tmp_path / "final"
    _study(final, {"grpo": _draws(rng, 0.6, 0.6), "popo": _draws(rng, 0.6, 0.6)}, "test", start)
    _study(final / "tune", {"grpo lr=1e-4": _draws(rng, 0.5, 0.5), "popo lr=1e-4": _draws(rng, 0.55, 0.5),
                            "grpo lr=1e-3": _draws(rng, 0.1, 0.1)}, "validation", start)
    data = tmp_path / "countdown"
    assert "outcome rows" in _derive("collect", final, "--task", "countdown", "--out", data)
    assert "outcome rows" in _derive("collect", final / "tune", "--task", "countdown", "--out", data / "tuning")
    (data / "tuning" / "tuning.json").write_text(json.dumps({
        "key": "optim.lr", "grpo": {"chosen": "1e-4", "means": {"1e-4": 0.55, "1e-3": 0.1}},
        "popo": {"chosen": "1e-4", "means": {"1e-4": 0.6}}}))
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    return tmp_path, data, start


def test_collect_then_report_rederives_every_number(fixture):
    tmp_path, data, start = fixture
    rows = read_rows(data / "outcomes.csv.gz", OUTCOME_FIELDS)
    assert len(rows) == PROBLEMS * (2 * len(SEEDS) + 1)  # two arms x three seeds, and the start once
    assert "control passed" in _derive("report", data, "--plan", tmp_path / "plan.json")
    numbers = json.loads((data / "numbers.json").read_text())
    final = json.loads((tmp_path / "final" / "grpo" / "seed-3" / "problems.json").read_text())
    grpo = np.array([json.loads((tmp_path / "final" / "grpo" / f"seed-{s}" / "problems.json").read_text())["correct"]
                     for s in SEEDS]) / K
    lift = grpo.mean() - np.mean(start[0]) / K
    assert numbers["control"]["avg"]["estimate"] == pytest.approx(lift, abs=1e-12)
    assert numbers["arms"]["grpo"]["avg"]["mean"] == pytest.approx(grpo.mean(), abs=1e-12)
    assert numbers["arms"]["grpo"]["greedy"]["mean"] == pytest.approx(
        np.mean([json.loads((tmp_path / "final" / "grpo" / f"seed-{s}" / "problems.json").read_text())["greedy"]
                 for s in SEEDS]), abs=1e-12)
    assert final["k"] == K
    popo = numbers["comparisons"]["popo"]
    assert popo["reading"] in ("differs", "equivalent within the margin", "inconclusive")
    assert popo["holm_difference"] == pytest.approx(popo["p_difference"])  # a family of one
    assert numbers["validation"]["grpo lr=1e-4"]["area"] == pytest.approx(0.3 + 0.001 * 50, abs=1e-12)
    report = (data / "report.md").read_text()
    assert "The positive control passed on test" in report and "popo (primary)" in report
    rows = [line.split(" |")[0] for line in report.splitlines() if " lr=" in line]  # by arm, then by the rate
    assert rows == ["| grpo lr=1e-4", "| grpo lr=1e-3", "| popo lr=1e-4"]
    index = (data.parent / "report.md").read_text()  # the study's page: the verdict and the primary test, linked
    assert "[countdown/report.md](countdown/report.md)" in index and "**passed**" in index
    assert f"{popo['estimate']:+.3f} [{popo['low']:+.3f}, {popo['high']:+.3f}]" in index
    for figure in ("differences.png", "pass_at_k.png", "validation.png"):  # drawn, and shown by the report
        assert (data / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({figure})" in report


def test_power_from_the_tuning_runs(fixture):
    tmp_path, data, start = fixture
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    out = _derive("power", data / "tuning", "--plan", tmp_path / "plan.json")
    numbers = json.loads((data / "tuning" / "power.json").read_text())
    grpo = np.array([json.loads((tmp_path / "final" / "tune" / "grpo_lr_1e-4" / f"seed-{s}" / "problems.json")
                                .read_text())["correct"] for s in SEEDS]) / K
    assert numbers["gain"] == pytest.approx(grpo.mean() - np.mean(start[0]) / K, abs=1e-12)
    assert numbers["margin"] == pytest.approx(0.25 * numbers["gain"], abs=1e-12)
    grid = numbers["grid"]
    assert grid["10x2000"]["se"] < grid["5x2000"]["se"] and grid["5x2000"]["se"] < grid["5x30"]["se"]
    assert "minimum detectable" in out and "positive control passed on validation" in out
    assert numbers["control"]["avg"]["estimate"] == pytest.approx(numbers["gain"], abs=1e-12)


def test_a_failed_control_reports_no_comparison(fixture):
    tmp_path, data, _ = fixture
    plan = {**PLAN, "control": {"min_lift": 0.9}}  # an unreachable lift
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert "control failed" in _derive("report", data, "--plan", tmp_path / "plan.json")
    numbers = json.loads((data / "numbers.json").read_text())
    assert "comparisons" not in numbers and not numbers["control"]["passed"]
    assert "no method comparison is reported" in (data / "report.md").read_text()
    assert "No method comparison: the control failed." in (data.parent / "report.md").read_text()
    assert not (data / "differences.png").exists()  # no figure of a comparison that is not reported


def test_an_interim_report_names_the_arms_not_run_yet(fixture):
    tmp_path, data, _ = fixture
    (tmp_path / "plan.json").write_text(json.dumps({**PLAN, "arms": ["grpo", "popo", "raft"]}))
    _derive("report", data, "--plan", tmp_path / "plan.json")
    numbers = json.loads((data / "numbers.json").read_text())
    assert numbers["missing_arms"] == ["raft"] and set(numbers["comparisons"]) == {"popo"}
    assert "**Interim: raft not run yet.**" in (data / "report.md").read_text()


def _control_run(root: Path, name: str, avgs: list[float], planned: int):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": planned}}))
    records = [{"step": 50 * i, "eval/greedy_acc": 0.4, f"eval/avg@{K}": a, f"eval/pass@{K}": 0.8}
               for i, a in enumerate(avgs)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_later_control_stage_keeps_the_earlier_stages_rows(tmp_path):
    """Stage 2 of the control search runs where stage 1's folders are gone: the committed table and raw curves
    keep stage 1's runs, and a run seen again replaces its old rows."""
    out = tmp_path / "control"
    _control_run(tmp_path / "one", "stage1/a", [0.30, 0.35, 0.40], planned=100)
    _control_run(tmp_path / "one", "stage1/b", [0.30, 0.20], planned=100)  # stopped early
    _derive("control", tmp_path / "one", "--out", out)
    _control_run(tmp_path / "two", "stage2/c", [0.30, 0.33, 0.36], planned=100)
    _control_run(tmp_path / "two", "stage1/b", [0.30, 0.20, 0.10], planned=100)  # b finished since
    _derive("control", tmp_path / "two", "--out", out)
    table = (out / "control_search.md").read_text().splitlines()
    assert table[0].startswith(f"| run | state | avg@{K} at steps")
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| stage1/a", "finished"], ["| stage1/b", "finished"], ["| stage2/c", "finished"]]
    curves = read_rows(out / "curves.csv.gz", CURVE_FIELDS)
    assert sorted((c["method"], c["step"]) for c in curves if c["method"] == "stage1/b") == [
        ("stage1/b", 0), ("stage1/b", 50), ("stage1/b", 100)]
    assert {c["method"] for c in curves} == {"stage1/a", "stage1/b", "stage2/c"}
