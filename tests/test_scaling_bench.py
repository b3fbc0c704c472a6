"""benchmarks/scaling.py: its controlled reward and step rule, and a `--quick` run end to end (no timing is
asserted; the run must produce full-length completions, the exact positive fraction and every output)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scaling(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(ROOT / "benchmarks"))
    import scaling as module

    return module


@pytest.fixture(scope="module")
def cells(scaling):
    import scaling_cells

    return scaling_cells


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_fraction_rewards_exact_per_group_and_pure(cells):
    texts = [f"completion {i}" for i in range(30)]
    for fraction, per_group in ((0.1, 1), (0.3, 3), (0.6, 6)):
        rewards = cells.fraction_rewards(texts, fraction, 10)
        assert [sum(rewards[g:g + 10]) for g in range(0, 30, 10)] == [per_group] * 3
    first = cells.fraction_rewards(texts, 0.3, 10)
    # a pure function of each group's texts: the same texts give the same rewards, wherever the group sits
    assert cells.fraction_rewards(texts[10:20] + texts[:10], 0.3, 10) == first[10:20] + first[:10]
    # the texts, not their positions, decide: reversing a group reverses its rewards
    assert cells.fraction_rewards(texts[:10][::-1], 0.3, 10) == first[:10][::-1]
    with pytest.raises(ValueError):
        cells.fraction_rewards(texts[:7], 0.3, 10)


def test_step_budget(cells):
    def args(**kw):
        return argparse.Namespace(**{"warmup": 1, "keep_first_s": 15.0, "cell_seconds": 8.0, "max_steps": 5, **kw})

    cheap = cells.StepBudget(args())
    walls = [0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    ran = 0
    for wall in walls:
        ran += 1
        if not cheap.add(wall):
            break
    assert ran == 6 and not cheap.first_counted and cheap.walls[cheap.measured()] == [0.1] * 5
    slow = cells.StepBudget(args())
    assert slow.add(20.0) is False and slow.first_counted and slow.walls[slow.measured()] == [20.0]
    medium = cells.StepBudget(args())
    assert medium.add(3.0) and medium.add(5.0) and medium.add(4.0) is False  # 9 s measured > 8 s


def test_cost_model_grows(scaling):
    short = scaling.predicted_step_s("trl", "10m", 128, 10, 0.3)
    assert short < scaling.predicted_step_s("trl", "10m", 1024, 10, 0.3)
    assert short < scaling.predicted_step_s("trl", "50m", 128, 10, 0.3)
    assert scaling.predicted_step_s("popo", "10m", 512, 10, 0.1) < scaling.predicted_step_s("popo", "10m", 512, 10, 0.6)


@pytest.mark.slow
def test_quick_run_writes_everything(tmp_path):
    """`--quick` end to end in a subprocess (about a minute on two slow cores)."""
    frameworks = ["popo", "grpo"] + (["trl"] if importlib.util.find_spec("trl") else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POPO_BENCH_CACHE": str(tmp_path / "models")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick", "--out", str(tmp_path),
                           "--frameworks", *frameworks], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert {"command", "machine", "versions", "settings", "models", "rows", "ratios", "fits", "findings",
            "skipped", "plots"} <= set(result)
    assert result["skipped"] == []
    assert result["models"]["1m"]["params"] == 991_872
    rows = result["rows"]
    assert {(r["framework"], r["length"]) for r in rows} == {(f, n) for f in frameworks for n in (24, 128)}
    rollouts, group = result["settings"]["rollouts_per_step"], result["settings"]["group_size"]
    for r in rows:
        assert r["completion_len_min"] == r["completion_len_max"] == r["length"], r  # no completion ended early
        assert r["positive_fraction"] == pytest.approx(0.3, abs=1e-6)
        assert r["measured_steps"] == 1 and r["step_s"] > 0 and r["generate_s"] > 0 and r["train_s"] > 0
        assert r["peak_rss_mb"] > 100
        assert r["params"] == 991_872
        # POPO forwards the positives only; GRPO (no zero-advantage group here) and TRL every row
        assert r["forwarded_rows"] == (round(0.3 * group) * rollouts // group if r["framework"] == "popo" else rollouts)
    popo = {r["length"]: r for r in rows if r["framework"] == "popo"}
    assert all(r["target_forward_s"] > 0 for r in popo.values())
    fits = [f for f in result["fits"] if f["against"] == "length"]
    assert {(f["framework"], f["phase"]) for f in fits} == {(fw, p) for fw in frameworks
                                                          for p in ("step", "generate", "train", "other")}
    assert all(f["x"] == [24, 128] for f in fits)
    if "trl" in frameworks:
        pairs = {(r["ours"], r["length"]) for r in result["ratios"]}
        assert pairs == {(o, n) for o in ("popo", "grpo") for n in (24, 128)}
    for name in result["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert "scaling_length.png" in result["plots"]
    markdown = (tmp_path / "scaling.md").read_text()
    assert markdown.startswith("# Scaling") and "--quick" in markdown and "## Fitted exponents" in markdown
