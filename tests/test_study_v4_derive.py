"""Study v4's plateau rule and its ledger of finished runs (docs/results/study_v4/derive.py, collect.py)."""

from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "study_v4"


def load(name: str):
    """docs/results/study_v4/`name`.py under a name of its own (study v3's scripts have the same file names)."""
    from popo.study.analysis import load_script

    return load_script(HERE / f"{name}.py", f"test_study_v4_{name}")


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


def test_the_tests_of_a_on_a_fixture_whose_answers_are_known(v4):
    """POPO equal to GRPO is equivalent (difference exactly 0); RAFT two correct samples of 16 above GRPO on
    every problem is different by exactly 0.125 and reaches GRPO's level earlier."""
    derive, _ = v4
    from popo.study.frontier import Trajectories

    steps = np.arange(0, 2100, 100)
    rng = np.random.default_rng(0)
    base = np.clip(rng.integers(0, 7, size=(3, 1, 40)) + (steps[None, :, None] // 200), 0, 14).astype(float)
    compute = {name: np.tile(steps * 64.0, (3, 1)) for name in ("rows", "tokens", "seconds")}

    def arm(method, correct):
        return Trajectories(method, derive.CONFIG, (0, 1, 2), steps, correct, 16, compute)

    sets = [arm("grpo", base), arm("popo", base.copy()), arm("raft", base + 2)]
    lines, numbers = derive.tests_a(sets, resamples=400)
    popo, raft = numbers["tests"]["popo"], numbers["tests"]["raft"]
    assert popo["estimate"] == 0 and popo["low"] == popo["high"] == 0 and popo["verdict"] == "equivalent"
    assert raft["estimate"] == pytest.approx(0.125, abs=1e-12) and raft["verdict"] == "different"
    assert raft["low"] == pytest.approx(0.125, abs=1e-12)  # the same shift on every problem: no spread
    level = derive.levels(steps, base.mean((0, 2)) / 16)[2000]
    assert numbers["target"] == pytest.approx(level - derive.MARGIN, abs=1e-12)
    reach = numbers["reach"]
    assert reach[f"raft {derive.CONFIG}"]["step"] < reach[f"grpo {derive.CONFIG}"]["step"]
    assert reach[f"popo {derive.CONFIG}"] == reach[f"grpo {derive.CONFIG}"]
    assert any(line.startswith("| raft − grpo | +0.1250") for line in lines)


def _sets_for_b(derive, popo_count: float):
    """POPO flat at `popo_count` correct of 16; GRPO 1e-4 reaches avg@16 0.5 at step 800 and stays, with half
    the problems at 16 and half at 0 (pass@16 0.5); GRPO 1e-5 is 0.003 above 0.5 at step 1000 only, every
    problem solved (pass@16 1); GRPO 3e-5 stays at 2 of 16."""
    from popo.study.frontier import Trajectories

    steps, problems = np.arange(0, 2100, 100), 60
    compute = {name: np.tile(steps * 64.0, (3, 1)) for name in ("rows", "tokens", "seconds")}
    half = np.array([16.0] * 30 + [0.0] * 30)
    fast = np.stack([np.minimum(e, 8) / 8 * half for e in range(len(steps))])  # [E, P]
    slow = np.full((len(steps), problems), 2.0)
    slow[10] = [8.0] * 57 + [9.0] * 3
    flat = np.full((len(steps), problems), popo_count)

    def arm(method, config, per_step):
        return Trajectories(method, config, (0, 1, 2), steps, np.tile(per_step, (3, 1, 1)), 16, compute)

    return [arm("grpo", "lr=1e-4", fast), arm("grpo", "lr=1e-5", slow), arm("grpo", "lr=3e-5", np.full_like(slow, 2.0)),
            arm("popo", "lr=1e-4", flat), arm("raft", "lr=1e-4", flat)]


@pytest.mark.parametrize("v3_upper, seeds", [(5e-4, 10), (7e-4, 15), (1e-3, 20), (1e-2, 20)])
def test_part_bs_choice_and_power_on_a_fixture(v4, v3_upper, seeds):
    """Two GRPO points lie within the tie band of POPO's 0.5: the one with more breadth (1e-5 at step 1000) is
    chosen; with no seed, interaction or residual variance in the fixture, the seeds follow v3's bound alone:
    MDE = 2.8016 sqrt(2 v / S) against 0.03."""
    derive, _ = v4
    lines, b = derive.choose_b(_sets_for_b(derive, 8.0), v3_upper)
    assert (b["s_P"], b["a_P"], b["grpo_config"], b["s_G"], b["how"]) == (200, 0.5, "lr=1e-5", 1000, "matched")
    assert b["a_G"] == pytest.approx(0.503125) and b["pass_G"] == 1.0
    assert b["interaction"] == 0 and b["residual"] == 0 and b["seed_variance"] == v3_upper
    assert b["mde"][10] == pytest.approx(2.80158 * (2 * v3_upper / 10) ** 0.5, rel=1e-5)
    assert b["seeds"] == seeds and any(f"Final seeds per arm: {seeds}" in line for line in lines)


def test_part_b_falls_back_to_grpos_plateau_when_no_grpo_point_is_near(v4):
    derive, _ = v4
    _, b = derive.choose_b(_sets_for_b(derive, 15.0), 5e-4)  # POPO at 0.9375: GRPO never within 0.0288
    assert b["grpo_config"] == "lr=1e-4" and b["how"].startswith("no GRPO configuration")
    # avg@16 = min(step / 100, 8) / 16: L(900) = 7.67 / 16 still rises to L(1200) = 8 / 16 by 0.021, L(1000) is flat
    assert b["s_G"] == b["grpo_stop"] == 1000 and b["a_G"] == 0.5


@pytest.mark.parametrize("passes, chosen", [((0.25, 0.45, 0.70), 800), ((0.31, 0.45, 0.7), 400),
                                            ((0.1, 0.2, 0.65), None)])
def test_cs_warm_up_is_the_shortest_in_the_band(v4, tmp_path, passes, chosen):
    import json

    derive, _ = v4
    for steps, breadth in zip((1600, 400, 800), (passes[2], passes[0], passes[1])):  # file order is not step order
        (tmp_path / f"warmup-{steps}.json").write_text(json.dumps(
            {"results": {"testbed": {"greedy_acc": 0.1, "avg@16": breadth / 3, "pass@16": breadth}}}))
    assert derive.warmups(tmp_path) == chosen
    table = (tmp_path / "report.md").read_text()
    assert table.index("| 400 |") < table.index("| 800 |") < table.index("| 1600 |")
    assert (f"Chosen: {chosen} warm-up steps" if chosen else "No warm-up length") in table


def test_along_the_trajectories_a_copy_of_grpo_is_matched_at_zero(v4):
    """POPO identical to GRPO, with the same compute: at every step its matched pass@16 and its avg@16 at equal
    rows differ from GRPO's by exactly 0 (or GRPO never reaches the point: '-'); the intervals are not 0, since
    each method's seeds are resampled on their own, and they cover 0."""
    derive, _ = v4
    from popo.study.frontier import Trajectories

    steps = np.arange(0, 600, 100)
    rng = np.random.default_rng(1)
    grpo = np.sort(rng.integers(0, 17, size=(3, len(steps), 30)), axis=1).astype(float)  # rising per problem
    compute = {name: np.tile(steps * 64.0, (3, 1)) for name in ("rows", "tokens", "seconds")}
    sets = [Trajectories(m, derive.CONFIG, (0, 1, 2), steps, grpo.copy(), 16, compute) for m in ("grpo", "popo")]
    lines, numbers = derive.along_steps(sets, resamples=50)
    assert sorted(numbers) == [f"popo {s}" for s in (100, 200, 300, 400, 500)]
    for row in numbers.values():
        assert row["matched_rows"] == 0 and row["rows_low"] <= 0 <= row["rows_high"]
        assert row["matched_pass"] == 0 or row["matched_pass"] != row["matched_pass"]
    assert sum(line.startswith("| popo |") for line in lines) == 5


def test_the_docs_quote_part_as_committed_numbers():
    """README and docs/results.md quote a's tests as the committed numbers.json gives them (derive.py writes it
    from the raw tables; test_plateau_report_rederives checks that)."""
    import json

    a = json.loads((HERE / "plateau" / "numbers.json").read_text())["a"]
    root = HERE.parents[2]

    def signed(x: float) -> str:
        return f"{x:+.3f}".replace("-", "−")

    popo, raft = a["tests"]["popo"], a["tests"]["raft"]
    quoted = f"{signed(popo['estimate'])} [{signed(popo['low'])}, {signed(popo['high'])}]"
    assert quoted in (root / "docs" / "results.md").read_text()
    assert f"[{signed(popo['low'])}, {signed(popo['high'])}]" in (root / "README.md").read_text()
    assert f"{signed(raft['estimate'])} [{signed(raft['low'])}, {signed(raft['high'])}]" in (
        root / "docs" / "results.md").read_text()
    assert popo["verdict"] == raft["verdict"] == "different" and a["reach"]["popo lr=1e-4"] is None


def test_as_tests_rederive_from_the_raw_tables(v4):
    """a's tests from the committed raw tables give the committed numbers.json's (derive.py plateau writes both;
    the along-the-trajectories tables, 40 bootstraps, are left to the script)."""
    import json

    derive, _ = v4
    from popo.study.analysis import read_rows
    from popo.study.frontier import from_tables

    data = HERE / "plateau"
    sets = from_tables(read_rows(data / derive.TRAJECTORIES, derive.TRAJECTORY_FIELDS),
                       read_rows(data / derive.OUTCOMES, derive.OUTCOME_FIELDS))
    _, numbers = derive.tests_a(sets)
    assert json.loads(json.dumps(numbers)) == json.loads((data / "numbers.json").read_text())["a"]


def test_collect_extends_an_older_table_with_the_later_columns(v4, tmp_path, warm_testbed_cache, one_thread):
    """A table written before `start_kl` existed keeps its rows (nan there); a run with `train.eval_start_kl`
    adds its own with the KL; the outcomes table is unchanged in form."""
    import math

    from popo.build import build_trainer
    from popo.study.analysis import read_rows, write_rows
    from tests.conftest import warm_testbed_config

    _, collect = v4
    data = tmp_path / "tables"
    data.mkdir()
    old = dict(task="countdown3", split="validation", method="grpo", config="lr=1e-4", seed=0, step=0, greedy_acc=0.4,
               avg=0.3, k=16, sample_nll=0.1, rows=0, tokens=0, seconds=0.0)
    old["pass"] = 0.8
    write_rows(data / collect.TRAJECTORIES, collect.TRAJECTORY_FIELDS, [old])
    write_rows(data / collect.OUTCOMES, collect.OUTCOME_FIELDS, [dict(
        task="countdown3", method="grpo", config="lr=1e-4", seed=0, step=0, problem="validation-0", greedy=1, correct=3,
        k=16)])
    run = tmp_path / "study" / "popo" / "seed-0"
    config = warm_testbed_config(warm_testbed_cache, run, "train.eval_every=3", "train.eval_samples=2",
                                 "train.eval_start_kl=true")
    build_trainer(config, log=lambda m: None).run()
    (run / "done.json").write_text("{}")
    assert collect.collect([tmp_path / "study"], data) == 1
    rows = read_rows(data / collect.TRAJECTORIES, collect.TRAJECTORY_FIELDS + collect.LATER_FIELDS)
    before = [r for r in rows if r["method"] == "grpo"]
    after = [r for r in rows if r["method"] == "popo"]
    assert len(before) == 1 and math.isnan(before[0]["start_kl"]) and before[0]["avg"] == 0.3
    assert [r["step"] for r in after] == [0, 3] and after[0]["start_kl"] < 1e-9 < after[1]["start_kl"]
    assert math.isnan(before[0]["weight_dev"]) and math.isnan(after[0]["weight_dev"])  # no diagnostics at step 0
    assert 0 <= after[1]["weight_dev"] < 1  # POPO's softmax weights' distance from uniform, logged at step 3
    assert collect.collect([tmp_path / "study"], tmp_path / "labelled", ("algo.alpha", "algo.tau")) == 1
    labelled = read_rows(tmp_path / "labelled" / collect.TRAJECTORIES, collect.TRAJECTORY_FIELDS)
    assert {r["config"] for r in labelled} == {f"{after[0]['config']} alpha=0.1 tau=0.995"}
    # continued with `popo train --resume ... train.steps=6` and stopped before the end: done.json is the old one
    config_file = run / "config.yaml"
    config_file.write_text(config_file.read_text().replace("steps: 3\n", "steps: 6\n", 1))
    assert not collect.finished(run) and collect.collect([tmp_path / "study"], tmp_path / "unfinished") == 0
    assert len(read_rows(data / collect.OUTCOMES, collect.OUTCOME_FIELDS)) == 1 + 2 * 20  # 20 problems x 2 evals


@pytest.mark.parametrize("s_g, grpo_stop, grpo_line", [(1500, 2000, "grpo lr=1e-5 2000 0,1500 15"),
                                                       (1800, 1200, "grpo lr=1e-5 1800 0 15")])
def test_bs_final_runs_follow_the_committed_choice(v4, s_g, grpo_stop, grpo_line):
    """GRPO trains to the later of its matched step and its plateau and is evaluated at both; POPO and RAFT at
    their stopping steps; the committed choice gives addendum 3's runs."""
    import json

    derive, _ = v4
    b = {"s_P": 2000, "raft_stop": 1600, "grpo_config": "lr=1e-5", "s_G": s_g, "grpo_stop": grpo_stop, "seeds": 15}
    assert derive.finals_plan({"b": b}) == ["popo lr=1e-4 2000 0 15", "raft lr=1e-4 1600 0 15", grpo_line]
    committed = json.loads((HERE / "plateau" / "numbers.json").read_text())
    assert derive.finals_plan(committed) == ["popo lr=1e-4 2000 0 15", "raft lr=1e-4 1600 0 15",
                                             "grpo lr=1e-5 2000 0,1500 15"]
