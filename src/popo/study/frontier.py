"""Compare methods along their accuracy-breadth trade-off, not only where each stopped.

A method trained at some configuration (a learning rate) moves, evaluation after evaluation, through the plane
of (avg@k, pass@k): sampled accuracy on one axis, breadth (the share of problems some sample solves) on the
other. Two methods that stop at different points of that plane are not yet compared: one may simply have
moved further along a curve both share. The comparisons here put them at the same place first.

- `matched_pass`: A's pass@j minus B's pass@j *at A's avg@k*, B's value read off B's trajectories by linear
  interpolation between the two consecutive points of a B trajectory that first bracket A's avg@k; where several
  B configurations reach it, the highest (B's best trade-off at that accuracy: conservative for a claim that A
  keeps more breadth). Undefined where no B trajectory reaches A's accuracy.
- `matched_compute`: A's avg@k minus B's avg@k *at A's compute* (rows or tokens through forward+backward, or
  seconds), B interpolated along its trajectory; where B's trajectory ends before A's compute, A is read at
  B's final compute instead.

Both come with a two-way bootstrap: the problems are resampled jointly for every run, the seeds within each
trajectory set, and the whole interpolation is recomputed in every resample, so the interval counts the
problem-level and the seed-level noise of both methods' curves. A trajectory is any ordered sequence of
evaluations: a run's steps (`popo.study.trajectory`), or a method's final points ordered by learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from popo.study.analysis import pass_at


@dataclass(frozen=True)
class Trajectories:
    """The evaluations of one method at one configuration over its seeds, all on the same problems."""

    method: str
    config: str
    seeds: tuple[int, ...]
    steps: np.ndarray  # [E] evaluation steps (or any ordering key)
    correct: np.ndarray  # [S, E, P] correct samples of k per problem
    k: int
    compute: dict[str, np.ndarray]  # name ("rows", "tokens", "seconds") -> [S, E] cumulative before each evaluation

    def __post_init__(self):
        s, e, _ = self.correct.shape
        if s != len(self.seeds) or e != len(self.steps):
            raise ValueError(f"{self.method} {self.config}: correct is {self.correct.shape}, with "
                             f"{len(self.seeds)} seeds and {len(self.steps)} steps")

    @property
    def label(self) -> str:
        return f"{self.method} {self.config}".strip()

    def index(self, step: int | None) -> int:
        """The evaluation at `step` (None: the last)."""
        if step is None:
            return len(self.steps) - 1
        hits = np.flatnonzero(self.steps == step)
        if not len(hits):
            raise KeyError(f"{self.label} has no evaluation at step {step} (it has {list(self.steps)})")
        return int(hits[0])


def from_tables(trajectory_rows: list[dict], outcome_rows: list[dict], task: str | None = None
                ) -> list[Trajectories]:
    """`Trajectories` from the two raw tables of a study (``trajectories.csv.gz``: a row per (method, config,
    seed, step) with its cumulative ``rows``, ``tokens`` and ``seconds``; ``outcomes.csv.gz``: a row per
    (method, config, seed, step, problem) with ``correct`` of ``k``). Every seed of a set must hold the same
    steps and problems."""
    cells: dict[tuple, dict] = {}
    for r in outcome_rows:
        if task is None or r["task"] == task:
            key = (r["method"], str(r["config"]))
            cell = cells.setdefault(key, {})
            cell[(int(r["seed"]), int(r["step"]), str(r["problem"]))] = (int(r["correct"]), int(r["k"]))
    compute: dict[tuple, dict] = {}
    for r in trajectory_rows:
        if task is None or r["task"] == task:
            compute.setdefault((r["method"], str(r["config"])), {})[(int(r["seed"]), int(r["step"]))] = r
    out = []
    for (method, config), cell in sorted(cells.items()):
        seeds = sorted({s for s, _, _ in cell})
        steps = sorted({t for _, t, _ in cell})
        problems = sorted({p for _, _, p in cell})
        ks = {k for _, k in cell.values()}
        if len(ks) != 1 or len(cell) != len(seeds) * len(steps) * len(problems):
            raise ValueError(f"{method} {config}: every seed needs the same steps, problems and k")
        correct = np.array([[[cell[(s, t, p)][0] for p in problems] for t in steps] for s in seeds], dtype=float)
        rows = compute.get((method, config), {})
        comp = {name: np.array([[float(rows[(s, t)][name]) if (s, t) in rows else np.nan for t in steps]
                                for s in seeds]) for name in ("rows", "tokens", "seconds")}
        out.append(Trajectories(method, config, tuple(seeds), np.array(steps), correct, ks.pop(), comp))
    return out


# ------------------------------------------------------------------------------------------ the estimators

def first_crossing(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y at x along each row's polyline (xs[r], ys[r]) in order, interpolated on the first segment whose ends
    bracket x[r]; nan where none does. xs, ys: [R, E]; x: [R]."""
    out = np.full(x.shape, np.nan)
    for e in range(xs.shape[1] - 1):
        x0, x1, y0, y1 = xs[:, e], xs[:, e + 1], ys[:, e], ys[:, e + 1]
        hit = np.isnan(out) & ((x0 - x) * (x1 - x) <= 0)
        span = np.where(x1 == x0, 1.0, x1 - x0)
        t = np.where(x1 == x0, 0.0, (x - x0) / span)
        out = np.where(hit, y0 + t * (y1 - y0), out)
    if xs.shape[1] == 1:
        out = np.where(xs[:, 0] == x, ys[:, 0], out)
    return out


def _weighted_curves(t: Trajectories, j: int, seed_w: np.ndarray, problem_w: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """avg@k and pass@j of the seed- and problem-weighted mean trajectory, [R, E] each."""
    avg = t.correct / t.k  # [S, E, P]
    breadth = pass_at(np.arange(t.k + 1), t.k, j)[t.correct.astype(int)]  # [S, E, P], by a table over counts
    norm = seed_w.sum(1, keepdims=True) * problem_w.sum(1, keepdims=True)  # [R, 1]
    return (np.einsum("rs,sep,rp->re", seed_w, avg, problem_w) / norm,
            np.einsum("rs,sep,rp->re", seed_w, breadth, problem_w) / norm)


def _weights(sets: list[Trajectories], problems: int, resamples: int, seed: int) -> tuple[list, np.ndarray]:
    """Resample weights: row 0 is the data itself (all weights 1), rows 1.. multinomial draws of the seeds of
    each set and of the problems (shared by all sets)."""
    rng = np.random.default_rng(seed)
    seed_ws = []
    for t in sets:
        n = len(t.seeds)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
        seed_ws.append(np.vstack([np.ones((1, n)), w]))
    pw = rng.multinomial(problems, np.full(problems, 1.0 / problems), size=resamples).astype(float)
    return seed_ws, np.vstack([np.ones((1, problems)), pw])


@dataclass(frozen=True)
class Matched:
    """A − B at a matched quantity, with its bootstrap interval (over resamples where it is defined)."""

    estimate: float  # nan when B never reaches A's point
    low: float
    high: float
    p_difference: float  # two-sided, 2 min(P(D <= 0), P(D >= 0)) over the defined resamples
    defined: float  # share of resamples where B reaches A's point
    a_value: float  # A's avg@k (matched_pass) or A's compute (matched_compute) where the match is made
    resamples: int


def _summarise(d: np.ndarray, a_value: float, level: float) -> Matched:
    point, boot = d[0], d[1:]
    ok = boot[~np.isnan(boot)]
    if np.isnan(point) or not len(ok):
        nan = float("nan")
        return Matched(nan, nan, nan, nan, float(len(ok) / len(boot)), a_value, len(boot))
    low, high = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float(np.mean(ok <= 0)), float(np.mean(ok >= 0))))
    return Matched(float(point), float(low), float(high), p, float(len(ok) / len(boot)), a_value, len(boot))


def _check_problems(sets: list[Trajectories]) -> int:
    sizes = {t.correct.shape[2] for t in sets}
    if len(sizes) != 1:
        raise ValueError(f"the trajectories were evaluated on different numbers of problems: {sorted(sizes)}")
    return sizes.pop()


def matched_pass(a: Trajectories, b: list[Trajectories], *, j: int, a_step: int | None = None,
                 resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Matched:
    """A's pass@j minus B's best pass@j at A's avg@k (the module docstring), A read at `a_step` (None: its
    last evaluation)."""
    sets = [a, *b]
    seed_ws, pw = _weights(sets, _check_problems(sets), resamples, seed)
    e = a.index(a_step)
    a_avg, a_pass = (c[:, e] for c in _weighted_curves(a, j, seed_ws[0], pw))
    best = np.full(a_avg.shape, np.nan)
    for t, w in zip(b, seed_ws[1:]):
        xs, ys = _weighted_curves(t, j, w, pw)
        best = np.fmax(best, first_crossing(xs, ys, a_avg))
    return _summarise(a_pass - best, float(a_avg[0]), level)


def matched_compute(a: Trajectories, b: Trajectories, *, by: str = "rows", a_step: int | None = None,
                    resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Matched:
    """A's avg@k minus B's avg@k at equal compute `by` (rows, tokens or seconds; seed-mean cumulative)."""
    sets = [a, b]
    seed_ws, pw = _weights(sets, _check_problems(sets), resamples, seed)
    a_avg, _ = _weighted_curves(a, 1, seed_ws[0], pw)
    b_avg, _ = _weighted_curves(b, 1, seed_ws[1], pw)
    a_c = seed_ws[0] @ a.compute[by] / seed_ws[0].sum(1, keepdims=True)  # [R, E]
    b_c = seed_ws[1] @ b.compute[by] / seed_ws[1].sum(1, keepdims=True)
    e = a.index(a_step)
    d = np.empty(len(pw))
    for r in range(len(pw)):
        at = min(a_c[r, e], b_c[r, -1])
        d[r] = np.interp(at, a_c[r, :e + 1], a_avg[r, :e + 1]) - np.interp(at, b_c[r], b_avg[r])
    return _summarise(d, float(min(a_c[0, e], b_c[0, -1])), level)


def best_avg(sets: list[Trajectories]) -> dict[str, tuple[str, int, float]]:
    """Per method: the configuration and step of its highest seed-mean avg@k, and that value."""
    out: dict[str, tuple[str, int, float]] = {}
    for t in sets:
        curve = (t.correct / t.k).mean(axis=(0, 2))  # [E]
        e = int(np.argmax(curve))
        if t.method not in out or curve[e] > out[t.method][2]:
            out[t.method] = (t.config, int(t.steps[e]), float(curve[e]))
    return out


def mean_curve(t: Trajectories, j: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed-mean (avg@k, pass@j) at each evaluation, [E] each."""
    ones = np.ones((1, len(t.seeds))), np.ones((1, t.correct.shape[2]))
    avg, breadth = _weighted_curves(t, j, *ones)
    return avg[0], breadth[0]
