"""c2's exploration to pass@256 (docs/results/study_v4/explore_c.py) on `popo eval` records whose answers are
known."""

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "study_v4"
CHOICE = {"s_P": 2000, "raft_stop": 1600, "s_G": 1500, "grpo_stop": 2000}


@pytest.fixture(scope="module")
def explore():
    from popo.study.analysis import load_script

    return load_script(HERE / "explore_c.py", "test_study_v4_explore_c")


def write_records(raw: Path, name: str, counts: list[int], k: int = 256) -> None:
    """One `popo eval` records file: problem p has counts[p] correct samples of k (the first ones)."""
    raw.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": f"test-{p}", "correct": [1.0] * n + [0.0] * (k - n)}) for p, n in enumerate(counts)]
    (raw / f"{name}.records.jsonl").write_text("\n".join(lines) + "\n")


def test_levels_and_differences_from_grpo_at_its_matched_step(explore, tmp_path):
    """GRPO@1500 solves problems 0-2 with 64 of 256 and never problem 3; POPO is a copy (every difference 0),
    RAFT also solves problem 3 once (pass@256 +1/4 exactly; pass@1 +1/1024); the start solves nothing."""
    raw, out = tmp_path / "raw", tmp_path / "explore"
    grpo = [64, 64, 64, 0]
    for seed in (100, 101, 102):
        write_records(raw, f"grpo-1500-seed-{seed}", grpo)
        write_records(raw, f"grpo-2000-seed-{seed}", [128, 128, 0, 0])
        write_records(raw, f"popo-2000-seed-{seed}", grpo)
        write_records(raw, f"raft-1600-seed-{seed}", [64, 64, 64, 1])
        write_records(raw, f"start-0-seed-{seed}", [0, 0, 0, 0])
    assert explore.collect(raw, out) == 15
    numbers = explore.report(out, CHOICE, resamples=200)
    assert numbers["levels"]["grpo@1500"]["pass@256"] == 0.75 and numbers["levels"]["start@0"]["pass@256"] == 0
    assert numbers["levels"]["grpo@1500"]["pass@1"] == pytest.approx(3 / 16, abs=1e-12)
    for k in explore.KS:
        popo = numbers["differences"][f"popo@2000 pass@{k}"]
        assert popo["estimate"] == popo["low"] == popo["high"] == 0
    assert numbers["differences"]["raft@1600 pass@256"]["estimate"] == pytest.approx(0.25, abs=1e-12)
    assert numbers["differences"]["raft@1600 pass@1"]["estimate"] == pytest.approx(1 / 1024, abs=1e-12)
    report = (out / "report.md").read_text()
    assert "| grpo | 2000 | 3 | 4 |" in report and "| raft@1600 |" in report


def test_an_evaluation_without_samples_is_an_error_naming_its_file_and_line(explore, tmp_path):
    write_records(tmp_path, "popo-2000-seed-100", [1, 2])
    path = tmp_path / "popo-2000-seed-100.records.jsonl"
    path.write_text(path.read_text() + json.dumps({"id": "test-2", "correct": []}) + "\n")
    with pytest.raises(ValueError, match=r"popo-2000-seed-100.records.jsonl:3: field 'correct'"):
        explore.collect(tmp_path, tmp_path / "out")


def test_a_seed_missing_a_problem_is_refused(explore, tmp_path):
    write_records(tmp_path, "popo-2000-seed-100", [1, 2])
    write_records(tmp_path, "popo-2000-seed-101", [1])
    explore.collect(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="every seed needs every problem"):
        explore.report(tmp_path / "out", CHOICE, resamples=10)


def test_a_run_trained_again_is_checked_against_the_finals_rows_and_tokens(explore, tmp_path):
    """A run that logs 10 rows and 100 tokens a step (a resume repeats step 2) is the finals' run when the
    committed trajectory has (20, 200) at step 2 and (30, 300) at step 3, and is not when one token differs."""
    from popo.study.analysis import write_rows

    run, finals = tmp_path / "grpo" / "seed-100", tmp_path / "finals"
    run.mkdir(parents=True)
    finals.mkdir()
    (run / "config.yaml").write_text("algo: {name: grpo}\ntrain: {seed: 100}\n")
    steps = [1, 2, 2, 3]
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "trained_rollouts": 10, "trained_tokens": 100}) + "\n" for s in steps))
    fields = ("method", "seed", "step", "rows", "tokens")

    def committed(tokens_at_3: int) -> None:
        write_rows(finals / "trajectories.csv.gz", fields,
                   [{"method": "grpo", "seed": 100, "step": 0, "rows": 0, "tokens": 0},
                    {"method": "grpo", "seed": 100, "step": 2, "rows": 20, "tokens": 200},
                    {"method": "grpo", "seed": 100, "step": 3, "rows": 30, "tokens": tokens_at_3},
                    {"method": "grpo", "seed": 101, "step": 3, "rows": 99, "tokens": 999}])

    committed(300)
    assert explore.same_run(run, finals, [2, 3]) == []
    committed(301)
    assert explore.same_run(run, finals, [2, 3]) == [
        f"grpo seed 100 step 3: (rows, tokens) (30, 300) in {run}, (30, 301) in the finals"]
    assert explore.same_run(run, finals, [4]) == ["grpo seed 100: the finals' trajectories have no step 4"]


def test_collect_keeps_an_earlier_sittings_evaluations(explore, tmp_path):
    """A second sitting's records replace the evaluations they repeat and keep the table's others."""
    out = tmp_path / "explore"
    write_records(tmp_path / "first", "popo-2000-seed-100", [1, 2])
    write_records(tmp_path / "first", "start-0-seed-100", [0, 0])
    assert explore.collect(tmp_path / "first", out) == 2
    write_records(tmp_path / "second", "start-0-seed-100", [3, 3])
    write_records(tmp_path / "second", "grpo-1500-seed-100", [5, 5])
    assert explore.collect(tmp_path / "second", out) == 2
    assert explore.committed(out) == {"popo-2000-seed-100", "start-0-seed-100", "grpo-1500-seed-100"}
    found = explore.cells(explore.read_rows(out / explore.OUTCOMES, explore.FIELDS))
    assert found[("start", 0)][0].tolist() == [[3, 3]] and found[("popo", 2000)][0].tolist() == [[1, 2]]


def test_the_docs_quote_c2s_exploration_as_committed():
    """docs/results.md and README quote POPO − GRPO@s_G pass@256 as the committed numbers.json gives it."""
    numbers = json.loads((HERE / "task_c" / "c2" / "explore" / "numbers.json").read_text())
    t = numbers["differences"]["popo@1000 pass@256"]
    quoted = f"{t['estimate']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]".replace("-", "−")
    root = HERE.parents[2]
    for doc in (root / "README.md", root / "docs" / "results.md"):
        assert quoted in " ".join(doc.read_text().split()), doc
    assert round(numbers["levels"]["start@0"]["pass@256"], 3) == 0.863
