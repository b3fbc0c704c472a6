"""`popo.study.frontier` on fixtures whose answer is known by construction.

B's trajectory passes through (avg@16, pass@16) = (0.2, 0.8), (0.3, 0.6), (0.4, 0.4): on the line
pass = 1.2 - 2 avg. With 1,000 problems and 16 samples, a point solving n problems with c correct samples each
has avg = n c / 16,000 and pass@16 = n / 1,000; A's points are built from two counts to land exactly where the
test needs them."""

import numpy as np
import pytest

from popo.study.frontier import (Trajectories, best_avg, first_crossing, from_tables, matched_compute,
                                 matched_pass, mean_curve)

K, P = 16, 1000


def counts(*groups: tuple[int, int]) -> np.ndarray:
    """[P] correct counts: `n` problems with `c` correct samples for each (n, c), the rest 0."""
    out = np.concatenate([np.full(n, c) for n, c in groups] + [np.zeros(P - sum(n for n, _ in groups))])
    assert out.shape == (P,)
    return out


def trajectories(method: str, evaluations: list[np.ndarray], seeds: int = 1, rows=None) -> Trajectories:
    correct = np.stack([np.stack(evaluations)] * seeds)  # [S, E, P]: every seed identical
    rows = np.array(rows if rows is not None else np.arange(len(evaluations)) * 100.0)
    compute = {name: np.tile(rows, (seeds, 1)) for name in ("rows", "tokens", "seconds")}
    return Trajectories(method, "lr=1e-4", tuple(range(seeds)), np.arange(len(evaluations)) * 100, correct, K, compute)


B = trajectories("b", [counts((800, 4)), counts((600, 8)), counts((400, 16))], seeds=3)
ON_CURVE = counts((500, 6), (200, 5))  # avg 0.25, pass 0.70 = 1.2 - 2 x 0.25
ABOVE = counts((250, 6), (500, 5))  # avg 0.25, pass 0.75


def test_the_fixture_lies_where_it_should():
    avg, breadth = mean_curve(B, 16)
    np.testing.assert_allclose(avg, [0.2, 0.3, 0.4], atol=1e-12)
    np.testing.assert_allclose(breadth, [0.8, 0.6, 0.4], atol=1e-12)
    assert ON_CURVE.sum() / (K * P) == 0.25 and (ON_CURVE > 0).mean() == 0.70
    assert ABOVE.sum() / (K * P) == 0.25 and (ABOVE > 0).mean() == 0.75


@pytest.mark.parametrize("point, expected", [(ON_CURVE, 0.0), (ABOVE, 0.05)])
def test_matched_pass_is_zero_on_the_same_curve_and_the_shift_above_it(point, expected):
    a = trajectories("a", [counts((800, 4)), point], seeds=3)
    m = matched_pass(a, [B], j=16, resamples=300)
    assert m.estimate == pytest.approx(expected, abs=1e-12)
    assert m.a_value == pytest.approx(0.25, abs=1e-12)
    assert m.low <= expected <= m.high and m.defined > 0.9


def test_several_b_configurations_take_the_best_and_an_unreached_accuracy_is_undefined():
    worse = trajectories("b", [counts((800, 4)), counts((400, 12))])  # crosses 0.25 on a lower line
    a = trajectories("a", [counts((800, 4)), ON_CURVE])
    assert matched_pass(a, [worse, B], j=16, resamples=50).estimate == pytest.approx(0.0, abs=1e-12)
    far = trajectories("a", [counts((800, 4)), counts((1000, 16))])  # avg 1.0: B never gets there
    m = matched_pass(far, [B], j=16, resamples=50)
    assert np.isnan(m.estimate) and m.defined == 0.0


def test_first_crossing_uses_the_first_bracketing_segment():
    xs = np.array([[0.0, 1.0, 0.0, 1.0]])  # the polyline reaches x = 0.5 three times
    ys = np.array([[0.0, 1.0, 5.0, 9.0]])
    assert first_crossing(xs, ys, np.array([0.5]))[0] == pytest.approx(0.5)
    assert np.isnan(first_crossing(xs, ys, np.array([2.0]))[0])


def test_matched_compute_reads_b_at_a_s_compute_and_a_at_b_s_end_when_b_stops_first():
    # A reaches avg 0.3 with 100 rows, B needs 200 rows for the same: at A's 100 rows B is at 0.25
    a = trajectories("a", [counts((800, 4)), counts((600, 8))], rows=[0, 100])
    b = trajectories("b", [counts((800, 4)), counts((600, 8))], rows=[0, 200])
    m = matched_compute(a, b, by="rows", resamples=50)
    assert m.estimate == pytest.approx(0.05, abs=1e-12) and m.a_value == 100
    short = trajectories("b", [counts((800, 4)), counts((600, 8))], rows=[0, 50])
    m = matched_compute(a, short, by="rows", resamples=50)  # B stops at 50 rows: A read there (0.25)
    assert m.estimate == pytest.approx(0.25 - 0.3, abs=1e-12) and m.a_value == 50


def test_best_avg_and_tables_round_trip():
    assert best_avg([B]) == {"b": ("lr=1e-4", 200, pytest.approx(0.4))}
    outcome_rows = [{"task": "t", "method": "b", "config": "lr=1e-4", "seed": s, "step": int(step),
                     "problem": f"p{p}", "correct": int(B.correct[s, e, p]), "k": K}
                    for s in range(3) for e, step in enumerate(B.steps) for p in range(P)]
    traj_rows = [{"task": "t", "method": "b", "config": "lr=1e-4", "seed": s, "step": int(step), "rows": 100.0 * e,
                  "tokens": 100.0 * e, "seconds": 100.0 * e} for s in range(3) for e, step in enumerate(B.steps)]
    (back,) = from_tables(traj_rows, outcome_rows)
    assert back.correct.sum() == B.correct.sum() and back.steps.tolist() == B.steps.tolist()
    np.testing.assert_allclose(np.sort(mean_curve(back, 16)[1]), np.sort(mean_curve(B, 16)[1]))
    with pytest.raises(ValueError, match="same steps"):
        from_tables(traj_rows, outcome_rows[:-1])
