"""Study v4's plateau rule and its ledger of finished runs (docs/results/study_v4/derive.py, collect.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "study_v4"


def load(name: str):
    """docs/results/study_v4/`name`.py under a name of its own (study v3's scripts have the same file names)."""
    spec = importlib.util.spec_from_file_location(f"test_study_v4_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def v4():
    return load("derive"), load("collect")


def test_levels_average_three_evaluations_and_the_rule_finds_where_the_rise_stops(v4):
    derive, _ = v4
    steps = np.arange(0, 2100, 100)
    rising = np.minimum(steps, 1000) * 1e-4  # +0.01 per 100 steps up to step 1000, flat after
    level = derive.levels(steps, rising)
    assert level[300] == pytest.approx(0.02) and 0 not in level and 100 not in level
    # L(1000) = (0.08 + 0.09 + 0.10) / 3 = 0.09 and L(1300) = 0.10: a rise of 0.01 >= 0.005 from s = 1000;
    # L(1100) = 0.0967 and L(1400) = 0.10: 0.0033 < 0.005, and every later window rises by 0, so s = 1100
    assert derive.plateau_step(level) == 1100
    assert derive.plateau_step(derive.levels(steps, steps * 1e-4)) is None  # still rising at 2,000


def test_todo_lists_what_the_tables_lack_by_arm_configuration_and_seed(v4, tmp_path):
    _, collect = v4
    from popo.study.analysis import write_rows

    row = dict(task="countdown3", split="validation", step=0, greedy_acc=0.4, avg=0.3, pass_=0.8, k=16,
               sample_nll=0.1, rows=0, tokens=0, seconds=0.0)
    row["pass"] = row.pop("pass_")
    rows = [dict(row, method=m, config="lr=1e-4", seed=s) for m, s in (("grpo", 0), ("grpo", 1), ("popo", 0))]
    write_rows(tmp_path / collect.TRAJECTORIES, collect.TRAJECTORY_FIELDS, rows)
    assert collect.todo(tmp_path, ["grpo", "popo", "raft"], [0, 1, 2], "lr=1e-4") == ["grpo 2 1", "popo 1 2",
                                                                                      "raft 0 3"]
    assert collect.todo(tmp_path, ["grpo"], [0, 1, 2], "lr=1e-5") == ["grpo 0 3"]
