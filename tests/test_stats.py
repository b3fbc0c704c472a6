"""The comparison statistics (scipy / statsmodels underneath) against values computed by hand: closed forms for 1
and 2 degrees of freedom, Holm by hand, TOST by hand, the bootstrap against the binomial standard error."""

from __future__ import annotations

import math

import pytest

from popo.study.stats import (binomial_se, bootstrap_difference, equivalence_test, holm, mean_ci, paired_test,
                              regularized_beta, sample_std, t_cdf, t_quantile)


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


def test_no_effect_size_below_three_seeds():
    assert math.isnan(paired_test([0.3, 0.5], [0.2, 0.3]).d_z)
    assert not math.isnan(paired_test([0.3, 0.5, 0.4], [0.2, 0.3, 0.35]).d_z)


def test_tost_equivalence_by_hand():
    # differences 0.01, 0.02, 0.03: mean 0.02, s = 0.01, se = 0.01 / sqrt(3); margin 0.05, df = 2
    se = 0.01 / math.sqrt(3)
    t_low, t_high = (0.02 + 0.05) / se, (0.02 - 0.05) / se  # 12.124, -5.196
    cdf2 = lambda t: 0.5 + t / (2 * math.sqrt(2 + t * t))  # noqa: E731  (closed form for df = 2)
    p = max(1 - cdf2(t_low), cdf2(t_high))  # 0.0176: the upper bound is the binding one
    result = equivalence_test([0.31, 0.42, 0.53], [0.30, 0.40, 0.50], margin=0.05)
    assert result.p_value == pytest.approx(p, abs=1e-6) and result.equivalent
    narrow = equivalence_test([0.31, 0.42, 0.53], [0.30, 0.40, 0.50], margin=0.03)  # the mean is 2/3 of it
    assert not narrow.equivalent and narrow.p_value > 0.05
    assert math.isnan(equivalence_test([0.3, 0.4], [0.3, 0.4], margin=0.1).p_value)  # two seeds: no claim
    assert equivalence_test([0.3, 0.4, 0.5], [0.3, 0.4, 0.5], margin=0.1).equivalent  # no spread, inside
    with pytest.raises(ValueError, match="margin"):
        equivalence_test([0.3, 0.4], [0.3, 0.4], margin=0.0)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    adjusted, rejected = holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06], abs=1e-12)
    assert rejected == [True, False, False]
    adjusted, rejected = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and rejected == [True, False]


def test_problem_level_bootstrap():
    constant = bootstrap_difference([[0.5] * 10] * 3, [[0.25] * 10] * 3, resamples=200)
    assert (constant.estimate, constant.low, constant.high) == (0.25, 0.25, 0.25)
    # one seed, 2000 problems, difference 1 on 30% of them: the interval is about +-1.96 sqrt(0.21 / 2000)
    row = [1.0] * 600 + [0.0] * 1400
    result = bootstrap_difference([row], [[0.0] * 2000], resamples=2000, seed=1)
    half = 1.959964 * math.sqrt(0.21 / 2000)  # 0.0201
    assert result.estimate == pytest.approx(0.3, abs=1e-12)
    assert (result.high - result.low) / 2 == pytest.approx(half, rel=0.1)
    assert result.low < 0.3 < result.high
    # seeds are resampled too: two seeds whose differences disagree widen the interval
    wide = bootstrap_difference([row, [0.0] * 2000], [[0.0] * 2000] * 2, resamples=500, seed=1)
    assert wide.high - wide.low > 5 * (result.high - result.low)
    with pytest.raises(ValueError, match="seeds, problems"):
        bootstrap_difference([0.1, 0.2], [0.1, 0.2])


def test_report_readings_use_holm_tost_and_the_primary_comparison():
    from popo.study.paired_report import paired_table

    def runs_of(values):
        return {s: [{"step": 1, "eval/greedy_acc": v}] for s, v in enumerate(values)}

    runs = {"grpo": runs_of([0.20, 0.22, 0.21, 0.25, 0.23]),
            "popo": runs_of([0.30, 0.31, 0.33, 0.34, 0.33]),  # clearly higher
            "raft": runs_of([0.27, 0.33, 0.25, 0.36, 0.29]),  # higher, noisier
            "grpo-kl": runs_of([0.201, 0.221, 0.211, 0.249, 0.231]),  # within 0.002 of grpo on every seed
            "dr-grpo": runs_of([0.10, 0.35, 0.15, 0.30, 0.20])}  # noisy: neither higher nor equivalent
    rows = {line.split(" | ")[0].strip("| "): line for line in paired_table(runs, "grpo", ["greedy_acc"])[2:]}
    def acc(name):
        return [runs[name][s][0]["eval/greedy_acc"] for s in range(5)]

    raw = {n: paired_test(acc(n), acc("grpo")).p_value for n in runs if n != "grpo"}
    primary = "<0.001" if raw["popo"] < 0.001 else f"{raw['popo']:.3f}"
    assert f"| {primary} (primary) |" in rows["popo"]  # the declared primary comparison keeps its raw p
    family = ["raft", "grpo-kl", "dr-grpo"]
    adjusted = dict(zip(family, holm([raw[n] for n in family])[0]))
    assert f"| {adjusted['raft']:.3f} |" in rows["raft"] and adjusted["raft"] > raw["raft"]
    assert rows["popo"].endswith("greedy_acc: higher |")
    assert "greedy_acc: equivalent within ±0.02" in rows["grpo-kl"]
    assert rows["dr-grpo"].endswith("greedy_acc: inconclusive |")
