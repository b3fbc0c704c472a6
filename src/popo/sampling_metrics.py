"""Sampling metrics for verifiable-reward evaluation: pass@k, avg@k, maj@k. Pure Python, no torch.

Conventions: for each problem we draw n samples and know which ones are correct.

* ``pass@k`` is the unbiased estimator of Chen et al. (2021): the probability that at least one of k
  samples drawn without replacement from the n is correct, ``1 - C(n-c, k) / C(n, k)``.
* ``avg@k`` is the mean correctness of k samples (the first k of the n, in sampling order). Its
  expectation does not depend on k; reporting it at several k shows the variance.
* ``maj@k`` is majority-vote accuracy: the most frequent extracted answer among the samples (normalised
  answers compared as strings) wins, and the problem counts as solved if that answer is correct.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["avg_at_k", "maj_at_k", "pass_at_k", "summarize"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which equals ``1 - C(n-c, k) / C(n, k)`` without
    forming large binomials. Requires ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean correctness of the given samples (pass the first k for avg@k). Floats count as given."""
    if len(correct) == 0:
        raise ValueError("avg_at_k needs at least one sample")
    return sum(float(x) for x in correct) / len(correct)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool | float]) -> float:
    """1.0 if the majority answer among ``answers`` is correct, else 0.0.

    ``answers[i]`` is the extracted, normalised final answer of sample i (None when it has none) and
    ``correct[i]`` whether sample i was graded correct. None answers do not vote. Ties are broken by
    first occurrence (the answer whose first vote comes earliest wins). The winner's correctness is
    that of its first occurrence. With no vote at all the result is 0.0.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length ({len(answers)} vs {len(correct)})")
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    for a, ok in zip(answers, correct):  # scan in order: the first answer with the top count wins ties
        if a is not None and votes[a] == top:
            return 1.0 if ok else 0.0
    return 0.0  # pragma: no cover - unreachable


def summarize(per_problem_correct: Sequence[Sequence[bool | float]], ks: Iterable[int]) -> dict[str, float]:
    """avg@k and pass@k over problems, for each k in ``ks`` that is <= n (samples per problem).

    ``per_problem_correct[p]`` lists the correctness of the n samples of problem p (truthy = correct;
    every problem must have the same n). Returns ``{"n": n, "problems": P, "avg@k": ..., "pass@k": ...}``
    with the means over problems; ks larger than n are left out.
    """
    if len(per_problem_correct) == 0:
        raise ValueError("summarize needs at least one problem")
    sizes = {len(row) for row in per_problem_correct}
    if len(sizes) != 1:
        raise ValueError(f"every problem needs the same number of samples, got {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("every problem needs at least one sample")
    out: dict[str, float] = {"n": n, "problems": len(per_problem_correct)}
    for k in sorted(set(ks)):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k > n:
            continue
        out[f"avg@{k}"] = sum(avg_at_k(row[:k]) for row in per_problem_correct) / len(per_problem_correct)
        out[f"pass@{k}"] = sum(
            pass_at_k(n, sum(1 for x in row if x), k) for row in per_problem_correct
        ) / len(per_problem_correct)
    return out
