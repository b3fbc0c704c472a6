"""`popo compare --tune`: each method's value chosen on validation over the tuning seeds, the final runs on
fresh seeds and the test split, and designs too small to choose honestly refused."""

from __future__ import annotations

import json

import pytest

import popo.study.report as report
import popo.study.runs as runs
import popo.study.tune as tune
from popo.cli import main
from popo.config import ConfigError


@pytest.fixture
def fake_studies(monkeypatch):
    """run_study records its calls; the tuning study's summary is made up (validation accuracy by lr)."""
    calls = []
    accuracy = {"popo": {"1e-5": 0.20, "3e-5": 0.31, "1e-4": 0.25}, "grpo": {"1e-5": 0.22, "3e-5": 0.22, "1e-4": 0.1}}

    def fake_run_study(out, variants, seeds, **kwargs):
        calls.append({"out": str(out), "variants": variants, "seeds": seeds, **kwargs})

    def fake_summary(out):
        return {f"{m} lr={v}": {s: {"greedy_acc": acc + 0.01 * s, "avg@16": acc + 0.01 * s} for s in range(3)}
                for m, by in accuracy.items() for v, acc in by.items()}

    monkeypatch.setattr(tune, "run_study", fake_run_study)
    monkeypatch.setattr(report, "summary", fake_summary)
    monkeypatch.setattr(report, "write_study_report", lambda *a, **k: None)
    return calls


def test_tuning_chooses_on_validation_then_compares_on_fresh_seeds_and_test(fake_studies, tmp_path):
    out = tmp_path / "study"
    assert main(["compare", "--methods", "popo,grpo", "--tune", "optim.lr=1e-5,3e-5,1e-4", "--seeds", "5",
                 "--out", str(out)]) == 0
    tuning, final = fake_studies
    assert tuning["out"] == str(out / "tune") and tuning["seeds"] == [0, 1, 2]
    assert tuning["overrides"][-1] == "data.eval_source=testbed"  # validation
    assert [v.name for v in tuning["variants"]] == [f"{m} lr={v}" for m in ("popo", "grpo")
                                                    for v in ("1e-5", "3e-5", "1e-4")]
    assert final["out"] == str(out) and final["seeds"] == [3, 4, 5, 6, 7]  # none used for the choice
    assert final["overrides"][-1] == "data.eval_source=testbed:test"
    chosen = {v.name: v.overrides for v in final["variants"]}
    assert chosen == {"popo": ("algo.name=popo", "optim.lr=3e-5"),
                      "grpo": ("algo.name=grpo", "optim.lr=1e-5")}  # a tie goes to the value listed first
    record = json.loads((out / "tuning.json").read_text())
    assert record["popo"]["chosen"] == "3e-5" and record["popo"]["means"]["3e-5"] == pytest.approx(0.32)
    assert "--tune optim.lr=1e-5,3e-5,1e-4" in final["command"]


@pytest.mark.parametrize("argv, message", [
    (["--tune", "optim.lr=1e-5,3e-5"], "at least 3 values"),
    (["--tune", "optim.lr=1e-5,3e-5,1e-4", "--tune-seeds", "2"], "at least 3 values"),
    (["--tune", "optim.lr=1e-5,3e-5,1e-4", "--seeds", "3"], "--seeds 5"),
    (["data.eval_source=testbed:test", "--tune", "optim.lr=1e-5,3e-5,1e-4"], "data.eval_source"),
])
def test_designs_that_cannot_choose_honestly_are_refused(fake_studies, tmp_path, capsys, argv, message):
    assert main(["compare", *argv, "--out", str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err
    assert not fake_studies


def test_choose_skips_untried_values():
    summary = {"popo lr=1": {0: {"greedy_acc": 0.1}}, "popo lr=2": {}}
    assert tune.choose(summary, [], "popo", "optim.lr", ["1", "2", "3"]) == ("1", {"1": 0.1})
    with pytest.raises(ConfigError, match="no finished tuning run"):
        tune.choose({}, [], "grpo", "optim.lr", ["1"])
    assert runs.parse_grid(["optim.lr=1,2"]) == [("optim.lr", ["1", "2"])]


def test_tuning_on_another_metric_flags_a_choice_at_the_grid_edge(fake_studies, monkeypatch, tmp_path, capsys):
    def fake_summary(out):  # avg@16 rises with the rate for popo (edge), peaks inside the grid for grpo
        by = {"popo": {"1e-5": 0.1, "3e-5": 0.2, "1e-4": 0.3}, "grpo": {"1e-5": 0.1, "3e-5": 0.4, "1e-4": 0.2}}
        return {f"{m} lr={v}": {s: {"avg@16": a, "greedy_acc": 0.5 - a} for s in range(3)}
                for m, values in by.items() for v, a in values.items()}

    monkeypatch.setattr(report, "summary", fake_summary)
    out = tmp_path / "study"
    assert main(["compare", "--methods", "popo,grpo", "--tune", "optim.lr=1e-5,1e-4,3e-5", "--tune-metric", "avg@16",
                 "--seeds", "5", "--out", str(out)]) == 0
    record = json.loads((out / "tuning.json").read_text())
    assert record["metric"] == "validation avg@16"
    assert (record["popo"]["chosen"], record["popo"]["at_edge"]) == ("1e-4", True)  # largest value, listed second
    assert (record["grpo"]["chosen"], record["grpo"]["at_edge"]) == ("3e-5", False)
    assert "popo's chosen optim.lr=1e-4 is at the edge" in capsys.readouterr().out
    assert "--tune-metric avg@16" in fake_studies[-1]["command"]
    assert tune.at_edge("b", ["a", "b", "c"]) is False and tune.at_edge("a", ["a", "b"]) is True


def test_tune_only_stops_before_the_final_runs(fake_studies, tmp_path):
    out = tmp_path / "study"
    argv = ["compare", "--methods", "popo,grpo", "--tune", "optim.lr=1e-5,3e-5,1e-4", "--seeds", "5", "--out", str(out)]
    assert main([*argv, "--tune-only"]) == 0
    assert len(fake_studies) == 1 and fake_studies[0]["out"] == str(out / "tune")
    assert json.loads((out / "tuning.json").read_text())["popo"]["chosen"] == "3e-5"
    assert main(argv) == 0  # the same command without --tune-only runs the final comparison
    assert fake_studies[-1]["out"] == str(out) and fake_studies[-1]["seeds"] == [3, 4, 5, 6, 7]


def test_final_runs_may_evaluate_differently_but_not_train_differently(fake_studies, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["compare", "--methods", "popo,grpo", "--tune", "optim.lr=1e-5,3e-5,1e-4", "--seeds", "5", "--out", str(out)]
    assert main([*argv, "--final-set", "data.eval_size=2000", "--final-set", "train.eval_every=300"]) == 0
    tuning, final = fake_studies
    assert "data.eval_size=2000" not in tuning["overrides"]
    assert final["overrides"][-3:] == ["data.eval_size=2000", "train.eval_every=300", "data.eval_source=testbed:test"]
    assert "--final-set data.eval_size=2000" in final["command"]
    assert main([*argv, "--final-set", "optim.lr=1"]) == 2
    assert "only data.eval_size" in capsys.readouterr().err
