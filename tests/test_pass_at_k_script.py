"""docs/results/pass_at_k.py on a tiny study folder built here (a barely warmed-up 1-digit testbed model as
both the start and the final policy of two seeds): outcome files with k samples on the first problems of
the held-out split, the report's tables, resuming without re-evaluating, and refusing other problems.
Also `popo.study.outcomes.outcomes_from_result` on a hand-made evaluation."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from popo.config import to_dict
from popo.errors import SetupError
from popo.evaluate import EvalResult, eval_seed
from popo.loading import resolve_model_path
from popo.study.outcomes import outcomes_from_result
from popo.study.runs import load_study, method_variants, prepare_study, run_config

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "results" / "pass_at_k.py"


def load_script():
    spec = importlib.util.spec_from_file_location("pass_at_k_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def tiny(cache: Path) -> list[str]:
    return [f"testbed.cache_dir={cache}", "testbed.warmup_steps=2", "testbed.warmup_batch=8", "testbed.digits=1",
            "testbed.test_size=12", "testbed.validation_size=0", "testbed.train_size=32", "model.device=cpu",
            "data.eval_source=testbed:test", "data.eval_size=8", "rollout.max_new_tokens=8", "train.steps=2",
            "train.eval_samples=2", "rollout.prompts_per_step=4", "rollout.group_size=2"]


def fake_study(tmp_path: Path) -> Path:
    """A finished two-seed `popo` study whose final policies are the start model itself."""
    out = tmp_path / "study"
    study = prepare_study(out, None, tiny(tmp_path / "cache"), method_variants(["popo"]), [0, 1], "popo compare")
    for seed in (0, 1):
        run = out / "popo" / f"seed-{seed}"
        config = run_config(load_study(out), study.variants[0], seed, run)
        model = resolve_model_path(config, log=lambda message: None)  # builds the tiny model once, cached
        shutil.copytree(model, run / "checkpoints" / "step-000002" / "policy")
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (run / "done.json").write_text(json.dumps({"seed": seed, "initial_checkpoint": model}))
    ids = [f"test-{i}" for i in range(8)]
    (out / "start-problems.json").write_text(json.dumps({"ids": ids, "k": 2}))
    return out


def test_pass_at_k_script_writes_resumes_and_checks_problems(tmp_path, one_thread, capsys):
    script, study = load_script(), fake_study(tmp_path)
    report = tmp_path / "report" / "pass.md"
    argv = [str(study), "--methods", "popo", "--k", "4", "--problems", "5", "--workers", "1", "--out", str(report)]
    text = script.main(argv)
    files = [study / "start-problems-k4-n5.json", *(study / "popo" / f"seed-{s}" / "problems-k4-n5.json"
                                                     for s in (0, 1))]
    outcomes = [json.loads(f.read_text()) for f in files]
    for o in outcomes:
        assert o["k"] == 4 and o["ids"] == [f"test-{i}" for i in range(5)]
        assert all(0 <= c <= 4 for c in o["correct"]) and len(o["greedy"]) == 5
        assert all(0 <= d <= c for d, c in zip(o["distinct_correct"], o["correct"]))
        assert o["protocol"]["k"] == 4 and o["protocol"]["max_new_tokens"] == 8
    # the start is sampled with seed 0's evaluation seed: seed 0's run (the same weights) draws the same
    start, seed0, seed1 = outcomes
    assert start["protocol"]["seed"] == seed0["protocol"]["seed"] == eval_seed(0) != seed1["protocol"]["seed"]
    assert (start["correct"], start["greedy"]) == (seed0["correct"], seed0["greedy"])
    assert "| *start* | 1 |" in text and "| popo | 2 |" in text and "pass@4" in text
    assert "| popo | pass@4 | 2 |" in text and "| popo | greedy acc | 2 |" in text
    assert "first 5 problems" in text and "Holm" in text and "--k 4" in text
    assert report.read_text() == text
    curves = json.loads(report.with_suffix(".json").read_text())
    assert set(curves["runs"]["popo"]) == {"0", "1"} and curves["paired"]["popo"]["pass@1"]["per_seed"]["0"] == 0.0

    # a second call reads the outcome files instead of evaluating again
    stamps = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    assert script.main(argv) == text
    assert "3 evaluations already done (skipped), 0 to run" in capsys.readouterr().out
    assert stamps == [f.stat().st_mtime_ns for f in files]

    # the start under a second evaluation seed: seed 1's (the same weights as seed 1's run draw the same)
    two = script.main([*argv, "--start-seeds", "2"])
    second = json.loads((study / "start-problems-k4-n5-seed-1.json").read_text())
    assert second["protocol"]["seed"] == seed1["protocol"]["seed"] and second["correct"] == seed1["correct"]
    assert "sampled 2 time(s)" in two and "| *start* | 2 |" in two
    one = script.main([*argv, "--seeds", "1"])  # the runs of the seeds asked for only (files already there)
    assert "| popo | 1 |" in one and "| popo | 2 |" not in one

    # other problems than the study's evaluation: refused before anything is evaluated
    (study / "start-problems.json").write_text(json.dumps({"ids": ["test-1", "test-0", *[f"test-{i}" for i in
                                                                                           range(2, 8)]], "k": 2}))
    with pytest.raises(SetupError, match="not the study's"):
        script.main([*argv[:6], "3", *argv[7:]])
    assert not (study / "start-problems-k4-n3.json").exists()


def test_outcomes_from_result_counts_distinct_correct_texts():
    class Example:
        def __init__(self, id):
            self.id = id

    result = EvalResult(greedy_texts=["a", "b"], greedy_correct=torch.tensor([1.0, 0.0]),
                        greedy_lengths=torch.tensor([1, 1]), sample_texts=["x", "x", "y", "z", "p", "q", "r", "s"],
                        correct=torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    outcome = outcomes_from_result(result, [Example("a"), Example("b")], 4)
    assert outcome == {"ids": ["a", "b"], "k": 4, "greedy": [1.0, 0.0], "correct": [3, 0],
                       "distinct_correct": [2, 0]}


def test_methods_against_the_baseline_are_paired_by_seed():
    """popo - grpo per seed on hand-made outcomes (k = 2, two problems): greedy 1/2 vs 0, pass@1 from the
    counts (c/2 per problem), pass@2 = share of problems with any correct sample; seed 2 has no grpo run."""
    script = load_script()

    def outcome(greedy, correct):
        return {"k": 2, "greedy": greedy, "correct": correct, "ids": ["a", "b"]}

    runs = {"grpo": {0: outcome([0, 0], [0, 1]), 1: outcome([0, 0], [0, 0])},
            "popo": {0: outcome([1, 0], [2, 1]), 1: outcome([1, 0], [1, 0]), 2: outcome([1, 1], [2, 2])}}
    lines, numbers = script.baseline_rows(runs, "grpo")
    popo = numbers["popo"]
    assert popo["greedy acc"]["seeds"] == [0, 1] and popo["greedy acc"]["mean_diff"] == pytest.approx(0.5)
    # pass@1: seed 0 (1 + 0.5)/2 - 0.25 = 0.5, seed 1 0.25 - 0 = 0.25 -> mean 0.375
    assert popo["pass@1"]["mean_diff"] == pytest.approx(0.375, abs=1e-12)
    # pass@2: seed 0 1.0 - 0.5, seed 1 0.5 - 0 -> 0.5 each: zero spread, no p-value claims of a difference
    assert popo["pass@2"]["mean_diff"] == pytest.approx(0.5, abs=1e-12)
    assert "grpo" not in numbers and len(lines) == 2 + 3
    assert script.baseline_rows(runs, "raft") == ([], {})
