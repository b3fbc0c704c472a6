"""Study v4, part b's tests (docs/results/study_v4/derive_b.py) on raw tables whose answers are known, written
before any final run exists."""

from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "study_v4"
CHOICE = {"s_P": 2000, "raft_stop": 1600, "s_G": 1500, "grpo_stop": 2000, "grpo_config": "lr=1e-5", "seeds": 3}


@pytest.fixture(scope="module")
def b():
    from popo.study.analysis import load_script

    return load_script(HERE / "derive_b.py", "test_study_v4_derive_b")


def write(b, folder: Path, arms: dict[tuple[str, int], np.ndarray]) -> None:
    from popo.study.analysis import write_rows

    rows = [dict(task="countdown3", method=m, config="lr=1e-4", seed=100 + s, step=step, problem=f"v4-test-{p}",
                 greedy=int(n >= 32), correct=int(n), k=64)
            for (m, step), correct in arms.items() for s, per in enumerate(correct) for p, n in enumerate(per)]
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / b.OUTCOMES, b.OUTCOME_FIELDS, rows)


def grpo_counts(seeds: int = 3, problems: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 65, size=(seeds, problems)).astype(float)


def test_a_copy_is_equivalent_and_a_shifted_arm_is_not_matched(b, tmp_path):
    """POPO = GRPO@1500 sample for sample: every difference exactly 0, matched, equivalent within ±0.03. RAFT 8
    more correct of 64 on every problem: avg@64 +0.125 exactly, outside the ±0.0288 match, so its pass@16 gain
    is not read as breadth."""
    g = grpo_counts()
    raft = np.minimum(g + 8, 64)
    write(b, tmp_path, {("grpo", 1500): g, ("grpo", 2000): g, ("popo", 2000): g.copy(), ("raft", 1600): raft})
    lines, numbers = b.tests_b(tmp_path, CHOICE, resamples=300)
    popo, raft_t = numbers["tests"]["popo"], numbers["tests"]["raft"]
    assert popo["pass16"] == 0 and popo["low"] == popo["high"] == 0 and popo["matched"]
    assert popo["reading"] == "equivalent within ±0.03"
    assert raft_t["avg64"] == pytest.approx(float((raft - g).mean()) / 64, abs=1e-12) and not raft_t["matched"]
    assert raft_t["reading"] == "not at matched accuracy: no breadth claim"
    assert "popo − grpo@2000 pass@16" in numbers["secondary"] and any("| popo@2000 − grpo@1500 |" in x for x in lines)
    assert any(x.startswith("## The tests of b on v4-test (") for x in lines)
    assert numbers["levels"]["raft@1600"]["avg@64"] == pytest.approx(float(raft.mean()) / 64, abs=1e-12)
    assert numbers["levels"]["popo@2000"] == numbers["levels"]["grpo@1500"] and "start@0" not in numbers["levels"]


def test_the_start_is_shown_once_over_every_arms_step_0(b, tmp_path):
    """POPO's compute is the mean over its seeds' trajectories (rows 100, 300, 200). Two arms' step-0
    evaluations of the same start, 10 and 20 correct of 64 on every problem: one start row with avg@64 = (10 + 20) / 2 / 64 and 6 evaluations, pass@16 the mean of 1 − C(64 − n, 16) / C(64, 16) over
    n = 10, 20, pass@64 1 and greedy 0 (fewer than 32 correct)."""
    from math import comb

    g = grpo_counts()
    write(b, tmp_path, {("grpo", 0): np.full((3, 40), 10.0), ("popo", 0): np.full((3, 40), 20.0),
                        ("grpo", 1500): g, ("grpo", 2000): g, ("popo", 2000): g, ("raft", 1600): g})
    from popo.study.analysis import write_rows

    write_rows(tmp_path / b.TRAJECTORIES, ("method", "seed", "step", "rows", "tokens", "seconds"),
               [{"method": "popo", "seed": 100 + i, "step": 2000, "rows": r, "tokens": 10 * r, "seconds": 1.5}
                for i, r in enumerate((100, 300, 200))])
    lines, numbers = b.tests_b(tmp_path, CHOICE, resamples=100)
    pass16 = sum(1 - comb(64 - n, 16) / comb(64, 16) for n in (10, 20)) / 2
    assert numbers["levels"]["start@0"] == pytest.approx({"greedy": 0.0, "avg@64": 15 / 64, "pass@16": pass16,
                                                          "pass@64": 1.0, "rows": 0, "tokens": 0, "seconds": 0},
                                                         abs=1e-12)
    popo = numbers["levels"]["popo@2000"]
    assert (popo["rows"], popo["tokens"], popo["seconds"]) == (200, 2000, 1.5)
    assert "grpo@0" not in numbers["levels"] and "| start | 0 | 6 |" in "\n".join(lines)


def test_nothing_is_tested_until_every_seed_is_in(b, tmp_path):
    g = grpo_counts()
    write(b, tmp_path, {("grpo", 1500): g, ("popo", 2000): g[:2], ("raft", 1600): g})
    lines, numbers = b.tests_b(tmp_path, CHOICE, resamples=100)
    assert numbers == {"complete": False} and "popo 2 of 3" in lines[0]


def test_pass16_is_the_unbiased_estimate_from_64_samples(b):
    """One problem, 1 correct of 64: pass@16 = 1 − C(63, 16) / C(64, 16) = 16 / 64."""
    from popo.study.analysis import pass_at

    assert pass_at(np.array([[1.0]]), b.K, 16)[0, 0] == pytest.approx(0.25, abs=1e-12)


def test_c2s_choice_carries_its_own_match_margin(b, tmp_path):
    """RAFT one more correct of 64 on every problem GRPO leaves unsolved at least once: avg@64 about +0.0156,
    inside b's ±0.0288 but outside a margin of ±0.01, which c2's choice carries (addendum 5); the report made by
    `--key finals` says which margin it tested."""
    import json

    g = grpo_counts()
    write(b, tmp_path, {("grpo", 1500): g, ("grpo", 2000): g, ("popo", 2000): g.copy(),
                        ("raft", 1600): np.minimum(g + 1, 64)})
    _, wide = b.tests_b(tmp_path, CHOICE, resamples=300)
    assert wide["tests"]["raft"]["matched"]
    (tmp_path / "numbers.json").write_text(json.dumps({"finals": CHOICE | {"margin": 0.01}}))
    b.main([str(tmp_path), "--choice", str(tmp_path / "numbers.json"), "--key", "finals", "--resamples", "300"])
    narrow = json.loads((tmp_path / "numbers.json").read_text())
    assert narrow["tests"]["popo"]["matched"] and not narrow["tests"]["raft"]["matched"]
    report = (tmp_path / "report.md").read_text()
    assert "part c2" in report and "match TOST ±0.0100" in report and "--key finals" in report
    assert "erratum to addendum 5" in report


def test_the_docs_quote_c2s_tests_as_committed():
    """README and docs/results.md quote c2's primary tests as the committed numbers.json gives them (derive_b.py
    writes it from the raw tables beside it)."""
    import json

    tests = json.loads((HERE / "task_c" / "c2" / "finals" / "numbers.json").read_text())["tests"]
    root = HERE.parents[2]

    def quoted(t: dict) -> str:
        return " ".join([f"{t['pass16']:+.3f}", f"[{t['low']:+.3f},", f"{t['high']:+.3f}]"]).replace("-", "−")

    for doc in (root / "README.md", root / "docs" / "results.md"):
        text = " ".join(doc.read_text().split())
        assert quoted(tests["popo"]) in text and quoted(tests["raft"]) in text, doc
    assert tests["popo"]["reading"] == tests["raft"]["reading"] == "equivalent within ±0.03"
