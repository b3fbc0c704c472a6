"""The comparison statistics against values computed by hand (closed forms for 1 and 2 degrees of freedom)."""

from __future__ import annotations

import math

import pytest

from popo.study.stats import (binomial_se, mean_ci, paired_test, regularized_beta, sample_std, t_cdf,
                              t_quantile)


def test_regularized_beta_closed_forms():
    # I_x(1, 1) = x;  I_x(2, 1) = x^2;  I_x(1, b) = 1 - (1 - x)^b
    assert regularized_beta(0.3, 1.0, 1.0) == pytest.approx(0.3, abs=1e-12)
    assert regularized_beta(0.3, 2.0, 1.0) == pytest.approx(0.09, abs=1e-12)
    assert regularized_beta(0.8, 1.0, 3.0) == pytest.approx(1 - 0.2**3, abs=1e-12)
    assert regularized_beta(0.0, 2.0, 3.0) == 0.0 and regularized_beta(1.0, 2.0, 3.0) == 1.0
    with pytest.raises(ValueError):
        regularized_beta(1.5, 1.0, 1.0)


def test_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t) / pi
    for t in (-3.0, -0.5, 0.0, 1.0, 7.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-9)
    # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-2.0, 0.3, 4.0):
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-9)


def test_t_quantile_hand_values():
    # df = 1: tan(pi (p - 1/2)); df = 2: t/sqrt(2 + t^2) = 2p - 1  =>  t^2 = 2 q^2 / (1 - q^2), q = 2p - 1
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-6)  # 12.7062047...
    assert t_quantile(0.975, 2) == pytest.approx(math.sqrt(2 * 0.95**2 / (1 - 0.95**2)), abs=1e-6)  # 4.3026527...
    assert t_quantile(0.975, 4) == pytest.approx(2.776445105, abs=1e-6)  # printed t tables
    assert t_quantile(0.025, 2) == pytest.approx(-t_quantile(0.975, 2), abs=1e-9)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.959963985, abs=1e-3)  # tends to the normal quantile


def test_mean_ci_by_hand():
    values = [0.2, 0.4, 0.3]
    # mean 0.3, s = sqrt((0.01 + 0.01 + 0) / 2) = 0.1, half width = t_{.975,2} * 0.1 / sqrt(3)
    ci = mean_ci(values)
    assert ci.mean == pytest.approx(0.3, abs=1e-12)
    assert sample_std(values) == pytest.approx(0.1, abs=1e-12)
    t2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))
    assert ci.half_width == pytest.approx(t2 * 0.1 / math.sqrt(3), abs=1e-6)  # 0.24841...
    assert ci.low == pytest.approx(0.3 - ci.half_width) and ci.n == 3
    single = mean_ci([0.5])
    assert single.mean == 0.5 and math.isnan(single.half_width)


def test_paired_test_by_hand():
    treatment, baseline = [0.30, 0.35, 0.40], [0.25, 0.33, 0.34]
    # differences 0.05, 0.02, 0.06: mean 0.04333.., s = sqrt((0.00667^2 + 0.02333^2 + 0.01667^2)/2) = 0.020817
    result = paired_test(treatment, baseline)
    d_mean = 0.13 / 3
    d_sd = math.sqrt(((0.05 - d_mean) ** 2 + (0.02 - d_mean) ** 2 + (0.06 - d_mean) ** 2) / 2)
    t = d_mean / (d_sd / math.sqrt(3))
    assert result.mean_diff == pytest.approx(d_mean, abs=1e-9)
    assert result.t == pytest.approx(t, abs=1e-6)  # 3.6056
    # two-sided p for df = 2: 1 - |t| / sqrt(2 + t^2)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-6)  # 0.0690
    assert result.d_z == pytest.approx(d_mean / d_sd, abs=1e-6)  # 2.0817
    assert not result.significant  # p = 0.069 >= 0.05 despite d_z > 2: three seeds have little power
    assert result.ci.low < 0 < result.ci.high


def test_paired_test_significant_and_sign():
    # differences 1.0, 1.1, 0.9, 1.0, 1.0: strongly positive
    result = paired_test([1.0, 1.1, 0.9, 1.0, 1.0], [0.0] * 5)
    assert result.significant and result.t > 0 and result.p_value < 1e-4
    flipped = paired_test([0.0] * 5, [1.0, 1.1, 0.9, 1.0, 1.0])
    assert flipped.t == pytest.approx(-result.t) and flipped.p_value == pytest.approx(result.p_value)


def test_paired_test_degenerate_cases():
    same = paired_test([0.3, 0.4], [0.3, 0.4])
    assert same.mean_diff == 0.0 and same.p_value == 1.0 and not same.significant
    one = paired_test([0.3], [0.2])
    assert one.mean_diff == pytest.approx(0.1) and math.isnan(one.p_value) and not one.significant
    with pytest.raises(ValueError, match="paired_test"):
        paired_test([0.1, 0.2], [0.1])


def test_binomial_se():
    assert binomial_se(0.3, 1000) == pytest.approx(math.sqrt(0.21 / 1000), abs=1e-12)  # 0.014491
    assert binomial_se(0.0, 10) == 0.0
    with pytest.raises(ValueError):
        binomial_se(0.5, 0)
    with pytest.raises(ValueError):
        binomial_se(1.2, 10)
