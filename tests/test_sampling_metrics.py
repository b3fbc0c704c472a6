"""pass@k, avg@k, maj@k and summarize against closed forms and a brute-force enumeration."""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popo.sampling_metrics import avg_at_k, maj_at_k, pass_at_k, summarize


def test_pass_at_k_closed_forms():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - comb(3, 2) / comb(5, 2)) == pytest.approx(0.7)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(4, 1, 4) == 1.0  # k = n and one correct
    assert pass_at_k(8, 6, 3) == 1.0  # n - c < k


def test_pass_at_k_large_n_is_stable():
    # binomials of this size overflow floats; the product form does not
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert 0.0 <= pass_at_k(5000, 3, 17) <= 1.0


@given(n=st.integers(1, 12), data=st.data())
def test_pass_at_k_matches_enumeration(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    exact = Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    if k > 1:
        assert pass_at_k(n, c, k) >= pass_at_k(n, c, k - 1) - 1e-12


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([1.0, 0.0]) == 0.5
    with pytest.raises(ValueError):
        avg_at_k([])


def test_maj_at_k():
    assert maj_at_k(["3", "5", "3"], [False, True, False]) == 0.0  # wrong majority
    assert maj_at_k(["5", "3", "5", None, None, None], [True, False, True, False, False, False]) == 1.0
    # None answers do not vote, even when they are the most common
    assert maj_at_k([None, None, "7"], [False, False, True]) == 1.0
    # a tie goes to the answer seen first
    assert maj_at_k(["2", "9", "9", "2"], [False, True, True, False]) == 0.0
    assert maj_at_k(["9", "2", "2", "9"], [True, False, False, True]) == 1.0
    assert maj_at_k([None, None], [False, False]) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False])


def test_summarize():
    per_problem = [
        [True, False, False, False],
        [False, False, False, False],
        [True, True, True, True],
    ]
    out = summarize(per_problem, ks=[1, 2, 4, 8])
    assert out["n"] == 4 and out["problems"] == 3
    assert out["avg@1"] == pytest.approx(2 / 3)  # first sample of each problem
    assert out["avg@4"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert out["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert out["pass@2"] == pytest.approx((pass_at_k(4, 1, 2) + 0 + 1) / 3)
    assert out["pass@4"] == pytest.approx(2 / 3)
    assert "pass@8" not in out and "avg@8" not in out  # k > n is left out
    with pytest.raises(ValueError, match="same number"):
        summarize([[True], [True, False]], ks=[1])
