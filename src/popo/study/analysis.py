"""A study's numbers re-derived from its raw per-seed, per-problem outcomes.

The raw data is one table with a row per (method, seed, problem): the greedy answer's correctness, how many of
the k samples were correct and how many distinct correct samples there were (`popo.study.outcomes`), plus a
row per (method, seed, step) of the validation or test curve. Both are written as ``.csv.gz`` beside the
report, so every number of the report can be recomputed from the repository alone.

Intervals and tests count both sources of noise: the seeds (training randomness) and the problems (a finite
test set). `two_way_bootstrap` resamples seeds and problems together, with the same draw for both arms of a
paired comparison (paired by seed index and by problem), and reads from one bootstrap distribution

- the percentile interval of the mean difference,
- the two-sided p-value of "no difference", 2 min(P(D <= 0), P(D >= 0)), and
- the TOST p-value against +-margin, max(P(D >= margin), P(D <= -margin)): the (1 - 2 alpha) interval lies
  inside the margin exactly when this p-value is below alpha.

Families of difference tests and of equivalence tests are corrected separately with Holm
(`popo.study.stats.holm`).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from popo.sampling_metrics import pass_at_k

OUTCOME_FIELDS = ("task", "method", "seed", "problem", "greedy", "correct", "k", "distinct")
CURVE_FIELDS = ("task", "split", "method", "seed", "step", "greedy_acc", "avg", "pass", "k")


def load_script(path: Path, name: str):
    """The study script at `path` as a module named `name`, without touching sys.path or sys.modules: two
    studies' scripts share file names (derive.py, collect.py), and a test process loads both."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rows(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """`rows` as a gzip-compressed CSV with a header, written whole and then renamed into place (mtime 0,
    so the same rows give the same bytes)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({f: row[f] for f in fields} for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(text.getvalue().encode())
    tmp.replace(path)


def read_rows(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a file written by `write_rows`, numbers parsed; a missing column is an error naming it."""
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in fields if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({k: _number(v) for k, v in row.items()})
            except ValueError as error:
                raise ValueError(f"{path}, line {line}: {error}") from None
        return rows


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def score_matrix(rows: list[dict], task: str, method: str, score: str) -> tuple[list[int], list[str], np.ndarray]:
    """(seeds, problems, [seeds, problems] matrix) of one method's per-problem scores: ``greedy`` (0/1),
    ``avg`` (correct / k) or ``distinct``. Every seed must hold the same problems."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["task"] == task and r["method"] == method:
            value = r["correct"] / r["k"] if score == "avg" else r[score]
            by_seed.setdefault(int(r["seed"]), {})[str(r["problem"])] = float(value)
    if not by_seed:
        raise KeyError(f"no outcomes of method {method!r} on task {task!r}")
    seeds = sorted(by_seed)
    problems = sorted(by_seed[seeds[0]])
    for s in seeds:
        if sorted(by_seed[s]) != problems:
            raise ValueError(f"{method} seed {s} holds other problems than seed {seeds[0]}")
    return seeds, problems, np.array([[by_seed[s][p] for p in problems] for s in seeds])


def problem_order(name: str) -> tuple:
    """Sort key that puts ``test-2`` before ``test-10`` (a trailing number compares as a number)."""
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def outcome_grids(rows: list[dict], key: tuple[str, ...], values: tuple[str, ...]) -> dict[tuple, dict]:
    """Group outcome rows by the fields in `key` (e.g. method and step) into [seeds, problems] grids.

    Each group maps to ``{"seeds": [...], "problems": [...], value: ndarray}`` for every field in `values`, seeds
    sorted and problems in `problem_order`. Every seed of a group must hold every problem of that group once."""
    table: dict[tuple, dict[tuple[int, str], tuple[float, ...]]] = {}
    for r in rows:
        group = tuple(int(r[f]) if f in ("seed", "step") else r[f] for f in key)
        cell = table.setdefault(group, {})
        where = (int(r["seed"]), str(r["problem"]))
        if where in cell:
            raise ValueError(f"{group}: seed {where[0]} problem {where[1]} appears twice")
        cell[where] = tuple(float(r[v]) for v in values)
    out = {}
    for group, cell in table.items():
        seeds, problems = sorted({s for s, _ in cell}), sorted({p for _, p in cell}, key=problem_order)
        if len(cell) != len(seeds) * len(problems):
            raise ValueError(f"{group}: every seed needs every problem ({len(cell)} outcomes for "
                             f"{len(seeds)} seeds x {len(problems)} problems)")
        grid = np.array([[cell[(s, p)] for p in problems] for s in seeds], dtype=float)  # [S, P, values]
        out[group] = {"seeds": seeds, "problems": problems, **{v: grid[..., i] for i, v in enumerate(values)}}
    return out


@dataclass(frozen=True)
class BootstrapTest:
    """A paired difference (treatment - baseline) with its bootstrap interval and p-values."""

    estimate: float
    low: float
    high: float
    p_difference: float
    p_equivalence: float  # nan without a margin
    margin: float
    seeds: int
    problems: int
    resamples: int


def two_way_bootstrap(treatment: np.ndarray, baseline: np.ndarray, *, margin: float = float("nan"),
                      resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> BootstrapTest:
    """The module docstring's test of mean(treatment) - mean(baseline) for [seeds, problems] score matrices
    paired by row (seed index) and column (problem). Each resample weighs the rows and the columns by
    multinomial counts, so its mean is (w_rows^T D w_cols) / (S P), computed for all resamples at once."""
    a, b = np.asarray(treatment, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"two_way_bootstrap: need two equal [seeds, problems] arrays, got {a.shape}, {b.shape}")
    diff = a - b
    seeds, problems = diff.shape
    rng = np.random.default_rng(seed)
    rows = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=resamples)  # [R, S]
    cols = rng.multinomial(problems, np.full(problems, 1.0 / problems), size=resamples)  # [R, P]
    means = np.einsum("rs,sp,rp->r", rows, diff, cols) / (seeds * problems)  # [R]
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    p_diff = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    p_equiv = (max(float(np.mean(means >= margin)), float(np.mean(means <= -margin)))
               if margin == margin else float("nan"))
    return BootstrapTest(float(diff.mean()), float(low), float(high), p_diff, p_equiv, margin, seeds, problems,
                         resamples)


def paired_scores(rows: list[dict], task: str, treatment: str, baseline: str, score: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Two methods' [seeds, problems] matrices on the problems both hold, seeds paired in sorted order (the
    start, evaluated under fewer seeds than the arms, is repeated cyclically to the arms' number of seeds)."""
    _, pa, a = score_matrix(rows, task, treatment, score)
    _, pb, b = score_matrix(rows, task, baseline, score)
    if pa != pb:
        raise ValueError(f"{treatment} and {baseline} were evaluated on different problems")
    if a.shape[0] != b.shape[0]:
        short, other = (a, b) if a.shape[0] < b.shape[0] else (b, a)
        tiled = short[np.arange(other.shape[0]) % short.shape[0]]
        a, b = (tiled, b) if short is a else (a, tiled)
    return a, b


def pass_at(counts, n: int, k: int) -> np.ndarray:
    """Unbiased pass@k of every problem from its `counts` correct of `n` samples (`popo.sampling_metrics.pass_at_k`)."""
    return np.array([pass_at_k(n, int(c), k) for c in np.asarray(counts).ravel()]).reshape(np.shape(counts))


def curve_area(steps: list[int], values: list[float]) -> float:
    """Area under a validation curve by the trapezoid rule, divided by its step range (a mean level)."""
    if len(steps) < 2:
        return float(values[0]) if values else float("nan")
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


@dataclass(frozen=True)
class Components:
    """Variance components of a [seeds, problems] score matrix under the two-way model
    x_sp = mu + a_s + b_p + e_sp (seed effects a, problem effects b, residual e), by the method of moments."""

    seed: float  # var(a_s): how much a whole run's mean moves with the seed
    problem: float  # var(b_p)
    residual: float  # var(e_sp): sampling noise of one problem's score in one run, and seed x problem interaction


def variance_components(x: np.ndarray) -> Components:
    """Unbiased mean-square estimates for a balanced two-way layout without replication (negative estimates,
    possible by chance, are clipped to 0)."""
    x = np.asarray(x, dtype=float)
    s, p = x.shape
    if s < 2 or p < 2:
        raise ValueError(f"variance_components: need at least 2 seeds and 2 problems, got {x.shape}")
    grand, rows, cols = x.mean(), x.mean(1, keepdims=True), x.mean(0, keepdims=True)
    ms_rows = p * float(((rows - grand) ** 2).sum()) / (s - 1)
    ms_cols = s * float(((cols - grand) ** 2).sum()) / (p - 1)
    ms_res = float(((x - rows - cols + grand) ** 2).sum()) / ((s - 1) * (p - 1))
    return Components(max(0.0, (ms_rows - ms_res) / p), max(0.0, (ms_cols - ms_res) / s), ms_res)


def interaction_variance(treatment: np.ndarray, baseline: np.ndarray) -> float:
    """var over problems of the true per-problem difference between two arms (the arm x problem interaction),
    from [seeds, problems] matrices of each: the variance of the per-problem mean differences less the part
    that the runs' own noise explains (clipped to 0)."""
    a, b = np.asarray(treatment, dtype=float), np.asarray(baseline, dtype=float)
    d = a.mean(0) - b.mean(0)  # [P]
    noise = variance_components(a).residual / a.shape[0] + variance_components(b).residual / b.shape[0]
    return max(0.0, float(d.var(ddof=1)) - noise)


def difference_se(c: Components, interaction: float, seeds: int, problems: int) -> float:
    """Standard error of the mean difference of two arms with `seeds` runs each on the same `problems`, seeds
    and problems both random (what `two_way_bootstrap` resamples): 2 var(a)/S + var(interaction)/P +
    2 var(e)/(S P), with both arms assumed to share the baseline's seed and residual variance."""
    return math.sqrt(2 * c.seed / seeds + interaction / problems + 2 * c.residual / (seeds * problems))


def minimum_detectable(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided level-`alpha` test detects with probability `power`:
    (z_{1 - alpha/2} + z_{power}) se (normal approximation)."""
    from scipy.stats import norm

    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)
