"""Study v4, part c's rules (docs/results/study_v4/derive_c.py): phase 0's step budget, the tuning choice with
its edge extension, and GRPO's positive control, on raw tables whose answers are known."""

from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "study_v4"
STEPS = np.arange(0, 600, 100)


@pytest.fixture(scope="module")
def c():
    from popo.study.analysis import load_script

    return load_script(HERE / "derive_c.py", "test_study_v4_derive_c")


def write_tables(c, folder: Path, runs: dict[tuple[str, str], np.ndarray], spread: float = float("nan")) -> None:
    """`runs`: (method, config) -> correct samples of 16, [seeds, evaluations at STEPS, problems]; `spread`: the
    weight_dev column of every evaluation after step 0."""
    from popo.study.analysis import write_rows

    curves, outcomes = [], []
    for (method, config), correct in runs.items():
        for seed, per_seed in enumerate(correct):
            for step, row in zip(STEPS.tolist(), per_seed):
                curves.append(dict(task="countdown4", split="validation", method=method, config=config, seed=seed,
                                   step=step, greedy_acc=0.0, avg=float(row.mean() / 16), k=16, sample_nll=0.1,
                                   rows=step * 128, tokens=step * 4000, seconds=step * 0.5, start_kl=0.0,
                                   weight_dev=spread if step else float("nan"),
                                   **{"pass": float((row > 0).mean())}))
                outcomes += [dict(task="countdown4", method=method, config=config, seed=seed, step=step,
                                  problem=f"validation-{p}", greedy=0, correct=int(n), k=16) for p, n in enumerate(row)]
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / c.TRAJECTORIES, c.TRAJECTORY_FIELDS + ("start_kl", "weight_dev"), curves)
    write_rows(folder / c.OUTCOMES, c.OUTCOME_FIELDS, outcomes)


def ramp(start: int, gain, seeds: int = 3, problems: int = 24) -> np.ndarray:
    """Every problem at `start` correct of 16 at step 0, rising in whole samples to `start + gain` at step 500
    (`gain`: one number, or one per problem)."""
    gain = np.broadcast_to(np.asarray(gain, dtype=float), (problems,))
    per_step = np.stack([start + np.floor(gain * e / 5) for e in range(len(STEPS))])
    return np.tile(per_step, (seeds, 1, 1))


@pytest.mark.parametrize("gain, budget", [(0, 500), (4, 1000)])
def test_phase0s_budget_follows_the_best_rates_rise(c, tmp_path, gain, budget):
    """The best rate (3e-5, ending at 4 + gain of 16) decides: flat, 500 steps; rising 0,0,1,2,3,4 samples,
    L(500) − L(200) = (9 − 1) / 3 / 16 = 0.167 >= 0.005, 1,000 steps. 1e-4 rises by 3 and ends below it."""
    write_tables(c, tmp_path, {("grpo", "lr=3e-5"): ramp(4, gain), ("grpo", "lr=1e-4"): ramp(0, 3)})
    assert c.phase0(tmp_path) == budget
    assert f"Budget of c's tuning and finals: {budget:,} steps" in (tmp_path / "report.md").read_text()


def test_the_committed_phase0_gives_1000_steps(c, tmp_path):
    import shutil

    shutil.copytree(HERE / "task_c" / "phase0", tmp_path / "phase0", ignore=shutil.ignore_patterns("*.md"))
    assert c.phase0(tmp_path / "phase0") == 1000


GRID = ("lr=1e-5", "lr=3e-5", "lr=1e-4", "lr=3e-4")
HALF = [1] * 12 + [0] * 12  # one more correct sample on half of the 24 problems


def grid(best: str, gain) -> dict:
    """GRPO at the four rates from 1 correct sample of 16: `best` gains `gain`, the others nothing."""
    return {("grpo", r): ramp(1, gain if r == best else 0) for r in GRID}


@pytest.mark.parametrize("best, gain, lift, nxt", [("lr=3e-5", 2, 0.125, "arms popo,raft"),
                                                   ("lr=3e-5", HALF, 0.03125, "control-failed"),
                                                   ("lr=1e-5", 2, 0.125, "extend grpo lr=3e-6")])
def test_tunings_choice_control_and_next_step(c, tmp_path, best, gain, lift, nxt):
    """Two more samples of 16 on every problem: a lift of exactly 0.125, passed; one more on half the problems:
    0.03125, below the floor 0.05 (the start's avg@16 is 1/16, half of it 0.031), failed whatever its interval;
    a choice at the grid's low edge asks for 3e-6 before any control is read."""
    write_tables(c, tmp_path, grid(best, gain))
    assert c.tuning(tmp_path, resamples=200) == nxt
    report = (tmp_path / "report.md").read_text()
    assert f"grpo: **{best}**" in report and report.rstrip().endswith(f"Next: `{nxt}`.")
    if not nxt.startswith("extend"):
        ctl = c.control(next(t for t in c._sets(tmp_path) if t.config == best), resamples=200)
        assert ctl["lift"] == pytest.approx(lift, abs=1e-12) and ctl["start"] == pytest.approx(1 / 16, abs=1e-12)
        assert ctl["threshold"] == 0.05 and ctl["passed"] == (lift >= 0.05) and ctl["low"] > 0


def test_an_extended_edge_is_chosen_over_and_popo_and_raft_are_compared_once_tuned(c, tmp_path):
    runs = grid("lr=1e-5", 2)
    runs[("grpo", "lr=3e-6")] = ramp(1, 1)  # the extension ends below 1e-5: 1e-5 stays the choice, passed
    runs.update({(arm, r): ramp(1, 3) for arm in ("popo", "raft") for r in GRID})
    write_tables(c, tmp_path, runs)
    assert c.tuning(tmp_path, resamples=200) == "extend popo lr=3e-6"  # four tied rates: the first, 1e-5, an edge
    runs.update({(arm, "lr=3e-6"): ramp(1, 2) for arm in ("popo", "raft")})
    write_tables(c, tmp_path, runs)
    assert c.tuning(tmp_path, resamples=200) == "tuned"
    report = (tmp_path / "report.md").read_text()
    assert "## Along the trajectories" in report and "| popo | 500 |" in report and "| raft | 500 |" in report


def test_components_compare_each_setting_with_popos_default_at_its_tuned_rate(c, tmp_path):
    """d: α = 0 identical to the default gives matched differences of exactly 0; α = 1 two samples of 16 above it
    on every problem at every evaluation after the start gives +0.125 avg@16 at equal rows; the weight spread
    is the mean of the logged values."""
    import json

    tuning, parts = tmp_path / "tuning", tmp_path / "components"
    default = ramp(2, 4)
    write_tables(c, tuning, {("popo", "lr=3e-5"): default, ("popo", "lr=1e-4"): ramp(0, 1)}, spread=0.002)
    (tuning / "numbers.json").write_text(json.dumps({"choices": {"popo": {"config": "lr=3e-5"}}}))
    higher = default + 2 * (STEPS > 0)[None, :, None]
    write_tables(c, parts, {("popo", "lr=3e-5 alpha=0 weight_temperature=1 tau=0.995"): default.copy(),
                            ("popo", "lr=3e-5 alpha=1 weight_temperature=1 tau=0.995"): higher}, spread=0.004)
    numbers = c.components(parts, tuning, resamples=100)
    same, more = (numbers[f"lr=3e-5 alpha={a} weight_temperature=1 tau=0.995"] for a in (0, 1))
    assert same["matched_rows"] == 0 and same["matched_pass"] == 0
    assert more["matched_rows"] == pytest.approx(0.125, abs=1e-12) and more["weight_dev"] == pytest.approx(0.004)
    assert numbers[c.default_label("lr=3e-5")]["weight_dev"] == pytest.approx(0.002)
    assert "(default)" in (parts / "report.md").read_text() and "lr=1e-4" not in json.dumps(numbers)


@pytest.mark.parametrize("popo_gain, grpo_config, s_g", [(1, "lr=3e-5", 300), (0, "lr=1e-5", 100)])
def test_c2s_final_runs_follow_bs_rule_with_its_own_margin(c, tmp_path, popo_gain, grpo_config, s_g):
    """Addendum 5. GRPO 3e-5 gains 2 of 16 (lift 0.125, so the margin is 0.25 x 0.125 = 0.03125); the other GRPO
    rates stay at 1 of 16 (1e-5) or at 0. POPO and RAFT are best at 3e-5. POPO gaining 1 ends at 2/16, which GRPO 3e-5 reaches
    at steps 300 and 400 (a tie: the first); POPO flat stays at 1/16, which GRPO 1e-5 has at every step, step 0
    included: step 0 (the start) is not a candidate, so the match is step 100."""
    runs = {("grpo", r): ramp(1, 2) if r == "lr=3e-5" else ramp(1, 0) if r == "lr=1e-5" else ramp(0, 0) for r in GRID}
    runs.update({(arm, r): ramp(1, popo_gain) if r == "lr=3e-5" else ramp(0, 0)
                 for arm in ("popo", "raft") for r in GRID})
    write_tables(c, tmp_path, runs)
    assert c.tuning(tmp_path, resamples=100) == "tuned"
    import json

    numbers = json.loads((tmp_path / "numbers.json").read_text())
    finals = numbers["finals"]
    assert finals["margin"] == 0.03125 and finals["how"] == "matched"
    assert (finals["grpo_config"], finals["s_G"]) == (grpo_config, s_g)
    assert finals["popo_config"] == finals["raft_config"] == "lr=3e-5"
    assert finals["a_P"] == pytest.approx((1 + popo_gain) / 16, abs=1e-12) and finals["a_G"] == finals["a_P"]
    assert "## c2's final runs" in (tmp_path / "report.md").read_text()
    plan = c._derive.finals_plan(numbers, "finals")
    last = max(s_g, finals["grpo_stop"])
    assert plan == [f"popo lr=3e-5 {finals['s_P']} 0 {finals['seeds']}",
                    f"raft lr=3e-5 {finals['raft_stop']} 0 {finals['seeds']}",
                    f"grpo {grpo_config} {last} 0{',' + str(s_g) if s_g != last else ''} {finals['seeds']}"]
