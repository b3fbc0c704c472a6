"""popo.study.analysis: the two-way bootstrap's interval and p-values, the raw-data files and score matrices."""

import gzip
import math

import numpy as np
import pytest

from popo.sampling_metrics import pass_at_k
from popo.study.analysis import (CURVE_FIELDS, OUTCOME_FIELDS, Components, curve_area, difference_se,
                                 interaction_variance, minimum_detectable, paired_scores, pass_at, read_rows,
                                 outcome_grids, score_matrix, two_way_bootstrap, variance_components, write_rows)


def test_constant_difference_is_certain():
    # every resample of a constant difference has the same mean: a zero-width interval at it, p = 0 against no
    # difference, and equivalence decided with certainty by which side of the margin it lies on
    a, b = np.full((3, 4), 0.5), np.full((3, 4), 0.25)
    test = two_way_bootstrap(a, b, margin=0.3, resamples=500)
    assert (test.estimate, test.low, test.high) == (0.25, 0.25, 0.25)
    assert test.p_difference == 0.0 and test.p_equivalence == 0.0
    assert two_way_bootstrap(a, b, margin=0.2, resamples=500).p_equivalence == 1.0
    same = two_way_bootstrap(a, a, resamples=500)
    assert same.p_difference == 1.0 and np.isnan(same.p_equivalence)


def test_resample_means_match_an_explicit_loop():
    # the weighted form (w_rows^T D w_cols) / (S P) against drawing seeds and problems with replacement
    rng = np.random.default_rng(3)
    d = rng.normal(size=(4, 7))
    rows = np.array([[2, 0, 1, 1]])  # seed 0 twice, seeds 2 and 3 once
    cols = np.array([[0, 3, 0, 1, 1, 1, 1]])
    drawn_rows, drawn_cols = [0, 0, 2, 3], [1, 1, 1, 3, 4, 5, 6]
    explicit = d[np.ix_(drawn_rows, drawn_cols)].mean()
    assert np.einsum("rs,sp,rp->r", rows, d, cols)[0] / (4 * 7) == pytest.approx(explicit, abs=1e-12)


def test_interval_covers_noise_from_seeds_and_problems():
    # no true difference: seed offsets and problem noise only. The interval must contain 0 in most draws, and it
    # must be wider than the seed-only interval when problems are few (it counts the finite test set)
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for trial in range(40):
        seeds, problems = 6, 60
        a = rng.normal(0, 0.05, (seeds, 1)) + rng.binomial(1, 0.4, (seeds, problems))
        b = rng.normal(0, 0.05, (seeds, 1)) + rng.binomial(1, 0.4, (seeds, problems))
        t = two_way_bootstrap(a, b, resamples=1000, seed=trial)
        covered += t.low <= 0 <= t.high
        widths.append(t.high - t.low)
    assert covered >= 34  # 95% nominal; 40 trials
    assert np.mean(widths) > 0.1  # the problems' binomial noise alone gives sd ~ 0.2 / sqrt(60 * 6) * sqrt(2)


def test_equivalence_p_value_is_the_tost_interval_rule():
    rng = np.random.default_rng(1)
    a = 0.5 + rng.normal(0, 0.02, (5, 200)) + 0.01
    b = 0.5 + rng.normal(0, 0.02, (5, 200))
    t = two_way_bootstrap(a, b, margin=0.05, resamples=4000, level=0.90)
    # the 90% interval lies inside +-0.05 exactly when the TOST p is below 0.05
    assert (t.p_equivalence < 0.05) == (-0.05 < t.low and t.high < 0.05)
    assert t.p_equivalence < 0.05 and t.p_difference < 0.05  # a real but small difference, inside the margin


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal"):
        two_way_bootstrap(np.zeros((2, 3)), np.zeros((3, 2)))


def _rows():
    rows = []
    for method, seeds, shift in (("start", [0], 0), ("grpo", [0, 1, 2], 1)):
        for s in seeds:
            for p, c in zip(("p1", "p2"), (4, 8)):
                rows.append({"task": "countdown", "method": method, "seed": s, "problem": p, "greedy": 1,
                             "correct": min(16, c + shift + s), "k": 16, "distinct": 2})
    return rows


def test_raw_rows_round_trip_and_score_matrices(tmp_path):
    path = tmp_path / "outcomes.csv.gz"
    write_rows(path, OUTCOME_FIELDS, _rows())
    first = path.read_bytes()
    write_rows(path, OUTCOME_FIELDS, _rows())
    assert path.read_bytes() == first  # the same rows give the same bytes
    rows = read_rows(path, OUTCOME_FIELDS)
    assert rows == _rows()
    seeds, problems, m = score_matrix(rows, "countdown", "grpo", "avg")
    assert seeds == [0, 1, 2] and problems == ["p1", "p2"]
    assert m[:, 0].tolist() == [5 / 16, 6 / 16, 7 / 16]
    a, b = paired_scores(rows, "countdown", "grpo", "start", "avg")
    assert a.shape == b.shape == (3, 2) and (b == b[0]).all()  # the one start seed paired with every seed
    with pytest.raises(KeyError, match="raft"):
        score_matrix(rows, "countdown", "raft", "avg")


def test_outcome_grids_groups_sorts_naturally_and_refuses_holes():
    rows = [{"method": m, "step": "100", "seed": s, "problem": f"test-{p}", "correct": 10 * s + p, "greedy": p % 2}
            for m in ("grpo", "popo") for s in (1, 0) for p in (10, 2, 1)]
    grids = outcome_grids(rows, ("method", "step"), ("correct", "greedy"))
    assert sorted(grids) == [("grpo", 100), ("popo", 100)]
    g = grids[("popo", 100)]
    assert g["seeds"] == [0, 1] and g["problems"] == ["test-1", "test-2", "test-10"]  # 2 before 10
    assert g["correct"].tolist() == [[1, 2, 10], [11, 12, 20]] and g["greedy"].tolist() == [[1, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="every seed needs every problem"):
        outcome_grids(rows[:-1], ("method", "step"), ("correct",))
    with pytest.raises(ValueError, match="appears twice"):
        outcome_grids(rows + rows[:1], ("method", "step"), ("correct",))


def test_a_missing_column_or_bad_number_is_named(tmp_path):
    path = tmp_path / "c.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("task,split,method,seed,step\nx,validation,grpo,0,50\n")
    with pytest.raises(ValueError, match="missing column.*greedy_acc"):
        read_rows(path, CURVE_FIELDS)


def test_pass_at_and_curve_area():
    counts = np.array([[0, 1, 16], [8, 15, 3]])
    expected = [[pass_at_k(16, int(c), 4) for c in row] for row in counts]
    assert pass_at(counts, 16, 4).tolist() == expected
    assert curve_area([0, 50, 100], [0.2, 0.4, 0.4]) == pytest.approx(0.35, abs=1e-12)  # (50*0.3 + 50*0.4) / 100
    assert curve_area([0], [0.3]) == 0.3


def test_variance_components_recover_known_variances():
    # x = a_s + b_p + e with var(a) = 0.01, var(b) = 0.04, var(e) = 0.09: estimates within sampling error
    rng = np.random.default_rng(5)
    s, p = 40, 2000
    x = rng.normal(0, 0.1, (s, 1)) + rng.normal(0, 0.2, (1, p)) + rng.normal(0, 0.3, (s, p))
    c = variance_components(x)
    assert c.seed == pytest.approx(0.01, rel=0.5)  # 40 seeds: the seed variance is known to about +-25%
    assert c.problem == pytest.approx(0.04, rel=0.1)
    assert c.residual == pytest.approx(0.09, rel=0.02)


def test_variance_components_hand_values():
    # 2 x 2: rows (1, 2), (3, 6): grand 3, row means 1.5, 4.5, column means 2, 4; residuals +-0.5
    c = variance_components(np.array([[1.0, 2.0], [3.0, 6.0]]))
    # MS_rows = 2 * (2.25 + 2.25) / 1 = 9, MS_cols = 2 * (1 + 1) = 4, MS_res = 4 * 0.25 / 1 = 1
    assert (c.seed, c.problem, c.residual) == (4.0, 1.5, 1.0)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        variance_components(np.zeros((1, 5)))


def test_interaction_and_detectable_difference():
    rng = np.random.default_rng(6)
    s, p = 30, 3000
    base = rng.normal(0, 0.2, (1, p))
    inter = rng.normal(0, 0.1, (1, p))  # the true per-problem difference, var 0.01
    a = base + inter + rng.normal(0, 0.3, (s, p))
    b = base + rng.normal(0, 0.3, (s, p))
    assert interaction_variance(a, b) == pytest.approx(0.01, rel=0.2)
    c = Components(seed=0.0004, problem=0.04, residual=0.09)
    se = difference_se(c, 0.01, seeds=10, problems=2000)
    assert se == pytest.approx(math.sqrt(2 * 0.0004 / 10 + 0.01 / 2000 + 2 * 0.09 / 20000), abs=1e-15)
    assert minimum_detectable(se) == pytest.approx(2.8016 * se, rel=1e-4)  # 1.95996 + 0.84162
