"""Statistics for comparisons over seeds: Student-t intervals, paired t-tests, effect sizes, binomial SE.

Pure functions of lists of floats; no dependency beyond the standard library. The Student-t
distribution function is computed from the regularised incomplete beta function (continued-fraction
expansion, evaluated with the modified Lentz method) and its quantile by bisection, which is accurate
to well below 1e-9 for the degrees of freedom that seed counts produce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (valid for x < (a + 1) / (a + b + 2)), modified Lentz."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_beta: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                 + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (e.g. p = 0.975 for a two-sided 95% interval)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with the n - 1 denominator (nan for fewer than two values)."""
    n = len(values)
    if n < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval (half-width nan when n < 2)."""

    mean: float
    half_width: float
    n: int
    level: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval over seeds: mean +- t_{(1+level)/2, n-1} * s / sqrt(n)."""
    n = len(values)
    if n < 2:
        return Interval(mean(values), math.nan, n, level)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sample_std(values) / math.sqrt(n)
    return Interval(mean(values), half, n, level)


@dataclass(frozen=True)
class PairedComparison:
    """Treatment minus baseline, paired by seed."""

    mean_diff: float
    ci: Interval
    t: float
    p_value: float
    d_z: float
    """Cohen's d_z: mean difference / standard deviation of the differences."""
    n: int

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < 1.0 - self.ci.level


def paired_test(treatment: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> PairedComparison:
    """Paired t-test of treatment - baseline (same seeds, same order): two-sided p, CI and d_z."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired_test: {len(treatment)} treatment values against {len(baseline)} baseline values")
    diffs = [a - b for a, b in zip(treatment, baseline)]
    n = len(diffs)
    ci = mean_ci(diffs, level)
    sd = sample_std(diffs)
    if n < 2 or math.isnan(sd):
        return PairedComparison(ci.mean, ci, math.nan, math.nan, math.nan, n)
    if sd == 0.0:
        same = ci.mean == 0.0
        return PairedComparison(ci.mean, ci, 0.0 if same else math.copysign(math.inf, ci.mean),
                                1.0 if same else 0.0, 0.0 if same else math.copysign(math.inf, ci.mean), n)
    t = ci.mean / (sd / math.sqrt(n))
    p = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    return PairedComparison(ci.mean, ci, t, min(1.0, p), ci.mean / sd, n)


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on n independent problems: sqrt(p (1 - p) / n)."""
    if n <= 0:
        raise ValueError(f"binomial_se: need at least one problem, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"binomial_se: accuracy must be in [0, 1], got {accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)
