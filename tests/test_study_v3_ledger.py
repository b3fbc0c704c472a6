"""docs/results/study_v3/ledger.py and `derive.py collect` across sittings: the committed tables are the record
of finished runs, a second collect keeps the first one's rows, `todo` lists exactly the missing runs, and
`choose` applies `popo compare --tune`'s rule to the committed curves (and refuses while a run is missing)."""

import json

import numpy as np
import pytest

from popo.study.analysis import CURVE_FIELDS, OUTCOME_FIELDS, read_rows
from test_study_v3_derive import ROOT, _derive, _draws, _study

LEDGER = ROOT / "docs" / "results" / "study_v3" / "ledger.py"
RATES = "1e-4,1e-3,1e-2"


def _ledger(*args):
    return _derive(*args, script=LEDGER)


def test_sittings_merge_and_the_ledger_reads_them(tmp_path):
    rng = np.random.default_rng(1)
    start = (rng.binomial(4, 0.3, 30).tolist(), rng.binomial(1, 0.4, 30).tolist())
    data = tmp_path / "tuning"
    # sitting 1 finished grpo at two rates; sitting 2 (a fresh runs/ folder) finished the third and popo
    _study(tmp_path / "one", {"grpo lr=1e-4": _draws(rng, 0.5, 0.5), "grpo lr=1e-3": _draws(rng, 0.2, 0.2)},
           "validation", start)
    _derive("collect", tmp_path / "one", "--task", "countdown", "--out", data)
    common = ("--arms", "grpo,popo", "--rates", RATES, "--seeds", "3,4,5", "--steps", "100")
    assert _ledger("todo", data, *common).split("\n")[:3] == ["3 grpo 1e-2", "3 popo 1e-4,1e-3,1e-2",
                                                              "4 grpo 1e-2"]
    with pytest.raises(SystemExit, match="12 tuning runs not finished"):
        _ledger("choose", data, *common, "--metric", "avg@4")
    _study(tmp_path / "two", {"grpo lr=1e-2": _draws(rng, 0.1, 0.1), "popo lr=1e-4": _draws(rng, 0.3, 0.3),
                              "popo lr=1e-3": _draws(rng, 0.3, 0.3), "popo lr=1e-2": _draws(rng, 0.3, 0.3)},
           "validation", start)
    _derive("collect", tmp_path / "two", "--task", "countdown", "--out", data)
    outcomes = read_rows(data / "outcomes.csv.gz", OUTCOME_FIELDS)
    assert len(outcomes) == 30 * (6 * 3 + 1)  # six runs x three seeds from two sittings, one start
    assert len(read_rows(data / "curves.csv.gz", CURVE_FIELDS)) == 6 * 3 * 3
    assert _ledger("todo", data, *common) == ""
    _ledger("choose", data, *common, "--metric", "avg@4")
    record = json.loads((data / "tuning.json").read_text())
    # the fixture's curves rise with the step alike for every rate: ties go to the first rate listed
    assert record["grpo"]["chosen"] == "1e-4" and record["grpo"]["at_edge"]
    assert record["grpo"]["means"]["1e-3"] == pytest.approx(0.3 + 0.001 * 100)


def test_finals_lists_the_missing_test_runs_as_seed_ranges(tmp_path):
    rng = np.random.default_rng(2)
    start = (rng.binomial(4, 0.3, 30).tolist(), rng.binomial(1, 0.4, 30).tolist())
    _study(tmp_path / "final", {"grpo": _draws(rng, 0.6, 0.6)}, "test", start)  # seeds 3, 4, 5
    _study(tmp_path / "tune", {"popo": _draws(rng, 0.6, 0.6)}, "validation", start)  # not the test split
    data = tmp_path / "countdown"
    _derive("collect", tmp_path / "final", tmp_path / "tune", "--task", "countdown", "--out", data)
    out = _ledger("finals", data, "--arms", "grpo,popo", "--seeds", "3,4,5,6,7", "--steps", "100")
    assert out.split("\n")[:2] == ["grpo 6 2", "popo 3 5"]
    assert _ledger("finals", data, "--arms", "grpo", "--seeds", "3,4,5", "--steps", "100") == ""
    assert _ledger("finals", data, "--arms", "grpo", "--seeds", "3,4,5", "--steps", "200").strip() == "grpo 3 3"


def test_exploration_outcomes_are_collected_and_reported(tmp_path):
    rng = np.random.default_rng(3)
    start = (rng.binomial(4, 0.3, 30).tolist(), rng.binomial(1, 0.4, 30).tolist())
    final = tmp_path / "final"
    _study(final, {"grpo": _draws(rng, 0.6, 0.6), "popo": _draws(rng, 0.6, 0.6)}, "test", start)

    def deep(path, seed, p):  # pass_at_k.py's outcome file: 8 samples a problem
        correct = rng.binomial(8, p, 30).tolist()
        path.write_text(json.dumps({"ids": [f"q{i}" for i in range(30)], "k": 8, "greedy": [1.0] * 30,
                                    "correct": correct, "distinct_correct": [min(c, 3) for c in correct],
                                    "run_seed": seed}))
        return correct

    data = tmp_path / "countdown"
    grpo = [deep(final / "grpo" / f"seed-{s}" / "problems-k8-n30.json", s, 0.5) for s in (3, 4, 5)]
    for i, s in enumerate((3, 4, 5)):
        deep(final / ("start-problems-k8-n30.json" if i == 0 else f"start-problems-k8-n30-seed-{s}.json"), s, 0.2)
    _derive("collect", final, "--task", "countdown", "--out", data)
    rows = read_rows(data / "exploration.csv.gz", OUTCOME_FIELDS)
    assert {(r["method"], r["seed"]) for r in rows} == {("grpo", s) for s in (3, 4, 5)} | {("start", s) for s in (3, 4, 5)}
    assert all(r["k"] == 8 for r in rows)
    assert _ledger("explored", data, "--arms", "grpo", "--seeds", "3,4,5") == ""  # exit status 0
    with pytest.raises(AssertionError):  # popo has no exploration rows: exit status 1
        _ledger("explored", data, "--arms", "grpo,popo", "--seeds", "3,4,5")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"task": "countdown", "arms": ["grpo", "popo"], "baseline": "grpo",
                                "primary": ["popo", "grpo"], "metric": "avg", "k": 4, "margin": 0.05,
                                "margin_share": 0.25, "resamples": 500, "control": {"min_lift": 0.10}}))
    _derive("report", data, "--plan", plan)
    numbers = json.loads((data / "numbers.json").read_text())
    assert numbers["exploration_deep"]["grpo"]["1"] == pytest.approx(np.mean(grpo) / 8, abs=1e-12)
    assert "pass@j up to 8 on the first 30 test problems" in (data / "report.md").read_text()


def test_a_study_with_another_start_keeps_the_committed_one(tmp_path):
    """Study v3's RAFT finals once sampled the start under another evaluation seed: collecting them must not
    swap the start every other arm was compared with, and must say so."""
    rng = np.random.default_rng(2)
    start = (rng.binomial(4, 0.3, 30).tolist(), rng.binomial(1, 0.4, 30).tolist())
    other = ([min(4, c + 1) for c in start[0]], start[1])
    data = tmp_path / "countdown"
    _study(tmp_path / "one", {"grpo": _draws(rng, 0.5, 0.5)}, "test", start)
    _derive("collect", tmp_path / "one", "--task", "countdown", "--out", data)
    _study(tmp_path / "two", {"raft": _draws(rng, 0.5, 0.5)}, "test", other)
    said = _derive("collect", tmp_path / "two", "--task", "countdown", "--out", data)
    assert "start differs from the start already in the table" in said
    rows = read_rows(data / "outcomes.csv.gz", OUTCOME_FIELDS)
    assert [r["correct"] for r in rows if r["method"] == "start"] == start[0]
    assert {r["method"] for r in rows} == {"start", "grpo", "raft"}
    _study(tmp_path / "three", {"popo": _draws(rng, 0.5, 0.5)}, "test", start)  # the same start: nothing said
    assert "differs" not in _derive("collect", tmp_path / "three", "--task", "countdown", "--out", data)
