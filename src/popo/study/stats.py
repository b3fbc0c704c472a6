"""Statistics for comparisons over seeds, through scipy.stats and statsmodels.

- `mean_ci`: mean and Student-t interval over seeds.
- `paired_test`: paired t-test of treatment minus baseline (same seeds), with its interval and Cohen's
  d_z, the effect size, reported only from `MIN_SEEDS_FOR_EFFECT` seeds up.
- `equivalence_test`: TOST (two one-sided paired t-tests, statsmodels' `ttost_paired`) against a stated
  margin: "matches" or "adds nothing" is claimed only when it rejects a difference of the margin or more.
- `holm`: Holm's step-down correction of a declared family of p-values (statsmodels' `multipletests`).
- `bootstrap_difference`: a paired problem-level bootstrap over seeds x problems (both resampled, the
  same draw for both arms), for a confidence interval that counts the test set's finite size as well as
  the seeds.
- `binomial_se`: the standard error of one accuracy measured on n problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

MIN_SEEDS_FOR_EFFECT = 3
"""No effect size (d_z) is reported from fewer seeds than this."""


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_beta: x must be in [0, 1], got {x}")
    return float(special.betainc(a, b, x))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom must be positive, got {df}")
    return float(stats.t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (e.g. p = 0.975 for a two-sided 95% interval)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    return float(stats.t.ppf(p, df))


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with the n - 1 denominator (nan for fewer than two values)."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


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
    """Cohen's d_z: mean difference / SD of the differences (nan below `MIN_SEEDS_FOR_EFFECT` seeds)."""
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
    if sd == 0.0:  # scipy returns nan here; the data say "always the same difference"
        same = ci.mean == 0.0
        sign = math.copysign(math.inf, ci.mean)
        return PairedComparison(ci.mean, ci, 0.0 if same else sign, 1.0 if same else 0.0,
                                math.nan if n < MIN_SEEDS_FOR_EFFECT else (0.0 if same else sign), n)
    result = stats.ttest_rel(treatment, baseline)
    d_z = ci.mean / sd if n >= MIN_SEEDS_FOR_EFFECT else math.nan
    return PairedComparison(ci.mean, ci, float(result.statistic), float(result.pvalue), d_z, n)


@dataclass(frozen=True)
class Equivalence:
    """TOST of treatment - baseline against +-margin: `p_value` is the larger of the two one-sided p."""

    margin: float
    p_value: float
    n: int
    alpha: float = 0.05

    @property
    def equivalent(self) -> bool:
        """Whether a difference of `margin` or more (either way) is rejected at level `alpha`."""
        return not math.isnan(self.p_value) and self.p_value < self.alpha


def equivalence_test(treatment: Sequence[float], baseline: Sequence[float], margin: float,
                     alpha: float = 0.05) -> Equivalence:
    """Paired TOST: H0 |mean difference| >= margin against H1 |difference| < margin (p is nan below
    `MIN_SEEDS_FOR_EFFECT` seeds: two seeds never make a claim of equivalence)."""
    if len(treatment) != len(baseline):
        raise ValueError(f"equivalence_test: {len(treatment)} treatment values against {len(baseline)} baseline values")
    if margin <= 0:
        raise ValueError(f"equivalence_test: the margin must be positive, got {margin}")
    n = len(treatment)
    diffs = np.asarray(treatment, dtype=float) - np.asarray(baseline, dtype=float)
    if n < MIN_SEEDS_FOR_EFFECT:  # no claim of equivalence from one or two seeds
        return Equivalence(margin, math.nan, n, alpha)
    if float(np.std(diffs, ddof=1)) == 0.0:  # no spread: inside the margin or not, with certainty
        return Equivalence(margin, 0.0 if abs(float(diffs.mean())) < margin else 1.0, n, alpha)
    from statsmodels.stats.weightstats import ttost_paired

    p_value, _, _ = ttost_paired(np.asarray(treatment, dtype=float), np.asarray(baseline, dtype=float),
                                 -margin, margin)
    return Equivalence(margin, float(p_value), n, alpha)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm-adjusted p-values and rejections of a family (nan entries are left out and stay nan / False)."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted, rejected = [math.nan] * len(p_values), [False] * len(p_values)
    if present:
        reject, corrected, _, _ = multipletests([p_values[i] for i in present], alpha=alpha, method="holm")
        for i, r, c in zip(present, reject, corrected):
            adjusted[i], rejected[i] = float(c), bool(r)
    return adjusted, rejected


@dataclass(frozen=True)
class BootstrapInterval:
    """An observed difference with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int


def bootstrap_difference(treatment, baseline, *, resamples: int = 2000, level: float = 0.95,
                         seed: int = 0) -> BootstrapInterval:
    """Percentile interval of mean(treatment) - mean(baseline) for per-problem scores [seeds, problems] of
    two arms paired by seed and by problem: each resample draws seeds and problems with replacement, the
    same draw for both arms, so the interval counts both the seed-to-seed spread and the test set's size
    (`popo.study.analysis.two_way_bootstrap`, which also gives its p-values)."""
    from popo.study.analysis import two_way_bootstrap

    t = two_way_bootstrap(treatment, baseline, resamples=resamples, level=level, seed=seed)
    return BootstrapInterval(t.estimate, t.low, t.high, level, resamples)


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on n independent problems: sqrt(p (1 - p) / n)."""
    if n <= 0:
        raise ValueError(f"binomial_se: need at least one problem, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"binomial_se: accuracy must be in [0, 1], got {accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)
