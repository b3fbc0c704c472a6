"""The batch math verifier: :class:`MathVerifier`, the reward rule of :mod:`popo.rewards.math` run in a pool
of worker processes with chunked dispatch and a hard time limit per item, and its :class:`VerifierStats`.

Answers are read in the parent (:mod:`popo.rewards.answers`); each distinct (answer, gold) pair is
checked in a worker (:mod:`popo.rewards.workers` starts and drives them, :mod:`popo.rewards.equivalence`
is what they run), or in this process when ``num_workers=0``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from popo.rewards import equivalence
from popo.rewards.answers import (
    DEFAULT_MAX_ANSWER_CHARS, DEFAULT_MAX_CHARS, DEFAULT_MAX_DEPTH, read_prediction, usable_gold_forms,
)
from popo.rewards.base import VerifierBase
from popo.rewards.equivalence import soft_timeout_usable, verify_boxes
from popo.rewards.sandbox import worker_command
from popo.rewards.workers import PoolRun, WorkerProcess, start_worker, stop_workers

__all__ = ["METRICS", "MathVerifier", "VerifierStats"]

METRICS = ("reward/timeout_retries", "reward/timeouts")
"""The counts :meth:`MathVerifier.take_metrics` gives (completions since its last call)."""


@dataclass
class VerifierStats:
    """Cumulative counters of a :class:`MathVerifier` (see ``MathVerifier.stats``).

    items: completions scored; verified: (box, gold) pairs actually checked by math-verify after
    de-duplication; correct: completions that earned 1.0. no_box / unclosed / empty / too_long /
    too_deep: completions that earned 0 before reaching math-verify, by reason. soft_timeouts: checks
    whose math-verify budget ran out (a first try and its retry count once each); hard_timeouts: checks
    whose worker overran the hard limit and was killed; retried: items checked again, in a fresh worker
    with the budget ``retry_timeout_s``, after their first budget ran out; timed_out: items that scored 0
    because time ran out for good (the retry's budget too, or the hard limit); crashes: items that made a
    worker die twice (an item whose worker dies is retried once, alone, on a fresh worker); restarts:
    workers started to replace a killed or dead one.
    """

    items: int = 0
    verified: int = 0
    correct: int = 0
    no_box: int = 0
    unclosed: int = 0
    empty: int = 0
    too_long: int = 0
    too_deep: int = 0
    soft_timeouts: int = 0
    hard_timeouts: int = 0
    retried: int = 0
    timed_out: int = 0
    crashes: int = 0
    restarts: int = 0
    bad_inputs: int = 0
    """Items scored 0 because their gold could not be read (None, a dict, an empty string, ...) or their
    completion was not text."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MathVerifier(VerifierBase):
    """Batch math verifier: a pool of worker processes running :func:`math_reward`'s rule.

    Args:
        num_workers: worker processes; 0 scores in the calling process (tests, debugging; no hard limit,
            and the soft limit only on the main thread).
        timeout_s: soft per-item budget inside the worker (math-verify's own SIGALRM timeouts).
        hard_timeout_s: per-item wall-clock limit enforced by the parent, which kills and replaces a
            worker that overruns it; that item gets 0. Default ``1.5 * timeout_s + 2``.
        retry_timeout_s: an item whose soft budget ran out is checked once more, in a fresh worker, with
            this budget (hard limit ``1.5 * retry_timeout_s + 2``, at least ``hard_timeout_s``) before it
            scores 0: a loaded machine can slow math-verify's first parse of a gold past ``timeout_s``,
            which would turn a correct answer into a negative. Default ``4 * timeout_s``; 0: no retry.
        max_chars: only the last ``max_chars`` characters of a completion are searched for the box.
        max_answer_chars: a box whose content is longer than this earns 0 without being parsed.
        max_depth: a box nested deeper than this ((), [], {} combined) earns 0 without being parsed.
        chunk_size: items sent to a worker per message (results stream back one by one).
        max_memory_mb: address-space limit of each worker (RLIMIT_AS); 0 for none.
        start_timeout_s: how long to wait for a worker to start before raising RuntimeError.
        dedup: score identical (box content, gold) pairs of a batch once (see below).

    ``score`` de-duplicates identical (box content, gold) pairs within a batch (a group of G rollouts
    often repeats the same answer), scores each once, and copies the reward. ``take_metrics`` gives the
    completions since its last call that were retried (``reward/timeout_retries``) and that scored 0 because
    time ran out for good (``reward/timeouts``); the trainer logs them each step. Workers are started in the
    constructor and stopped by ``close()``, by leaving a ``with`` block, or when the verifier is garbage
    collected; they also exit on their own when the parent process dies. ``score`` is serialised by a
    lock, so one verifier can be shared between threads.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        *,
        hard_timeout_s: float | None = None,
        retry_timeout_s: float | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        chunk_size: int = 32,
        max_memory_mb: int = 4096,
        start_timeout_s: float = 120.0,
        dedup: bool = True,
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.hard_timeout_s = float(hard_timeout_s) if hard_timeout_s is not None else 1.5 * self.timeout_s + 2.0
        if self.hard_timeout_s <= 0:
            raise ValueError(f"hard_timeout_s must be > 0, got {hard_timeout_s}")
        self.retry_timeout_s = 4 * self.timeout_s if retry_timeout_s is None else float(retry_timeout_s)
        if self.retry_timeout_s < 0:
            raise ValueError(f"retry_timeout_s must be >= 0, got {retry_timeout_s}")
        self.max_chars = int(max_chars)
        self.max_answer_chars = int(max_answer_chars)
        self.max_depth = int(max_depth)
        self.chunk_size = int(chunk_size)
        self.max_memory_mb = int(max_memory_mb)
        self.start_timeout_s = float(start_timeout_s)
        self.dedup = bool(dedup)
        self.stats = VerifierStats()
        self._counts = dict.fromkeys(METRICS, 0)
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[WorkerProcess] = []
        self._finalizer = weakref.finalize(self, stop_workers, self._workers)
        for _ in range(self.num_workers):
            self._workers.append(self._spawn())

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent). The verifier cannot score afterwards."""
        self._closed = True
        self._finalizer()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change when a worker is replaced)."""
        return [w.pid for w in self._workers]

    def reset_stats(self) -> None:
        self.stats = VerifierStats()

    def wait_ready(self) -> None:
        """Block until every worker has started (``score`` does this by itself; useful before timing).

        Raises RuntimeError if a worker fails to start within ``start_timeout_s``.
        """
        if self._closed:
            raise RuntimeError("this MathVerifier is closed")
        with self._lock:
            if self._workers:
                self._run_pool([], wait_for_start=True)

    def take_metrics(self) -> dict[str, float]:
        """``reward/timeout_retries`` and ``reward/timeouts`` (completions, see the class docstring) since the
        last call."""
        with self._lock:
            counts, self._counts = self._counts, dict.fromkeys(METRICS, 0)
        return {k: float(v) for k, v in counts.items()}

    def _spawn(self, timeout_s: float | None = None) -> WorkerProcess:
        budget = repr(self.timeout_s if timeout_s is None else timeout_s)
        return start_worker(lambda cmd_fd, res_fd: worker_command(
            equivalence.__file__, cmd_fd, res_fd, self.max_memory_mb, budget), self.start_timeout_s)

    # -- scoring -----------------------------------------------------------------------------------

    def score(self, completions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> list[float]:
        """Rewards in [0, 1] for each (completion, gold) pair, in order."""
        if len(completions) != len(answers):
            raise ValueError(
                f"got {len(completions)} completions but {len(answers)} answers; they must pair up"
            )
        if self._closed:
            raise RuntimeError("this MathVerifier is closed")
        with self._lock:
            return self._score(completions, answers)

    def _score(self, completions: Sequence[str], answers: Sequence) -> list[float]:
        stats = self.stats
        rewards = [0.0] * len(completions)
        jobs: dict[tuple, list[int]] = {}
        for i, (completion, answer) in enumerate(zip(completions, answers)):
            forms = usable_gold_forms(answer)
            stats.items += 1
            if not forms or not isinstance(completion, str):  # an unreadable gold or a non-text completion
                stats.bad_inputs += 1
                continue
            content, parts, status = read_prediction(completion, self.max_chars, self.max_answer_chars, self.max_depth,
                                                     with_parts=any(len(f) > 1 for f in forms))
            if content is None:
                setattr(stats, status, getattr(stats, status) + 1)
                continue
            key = (content, parts, forms) if self.dedup else (content, parts, forms, i)
            jobs.setdefault(key, []).append(i)
        keys = list(jobs)
        stats.verified += len(keys)
        items = [(job, *key[:3]) for job, key in enumerate(keys)]
        results, retried, late = self._verify(items)
        for job, key in enumerate(keys):
            reward = results.get(job, 0.0)
            for i in jobs[key]:
                rewards[i] = reward
            if reward > 0:
                stats.correct += len(jobs[key])
            self._counts["reward/timeout_retries"] += len(jobs[key]) * (job in retried)
            self._counts["reward/timeouts"] += len(jobs[key]) * (job in late)
        return rewards

    def _verify(self, items: list[tuple]) -> tuple[dict[int, float], set[int], set[int]]:
        """({job: reward}, the jobs retried, the jobs out of time for good) of (job, last box, parts, gold forms)
        items: a job whose soft budget ran out is checked once more with ``retry_timeout_s``, in fresh workers."""
        results, soft, late = self._attempt(items, self.timeout_s, self._workers, self._spawn, self.hard_timeout_s)
        retry = [item for item in items if item[0] in soft]
        if retry and self.retry_timeout_s:
            budget = self.retry_timeout_s
            hard = max(self.hard_timeout_s, 1.5 * budget + 2.0)
            fresh = [self._spawn(budget) for _ in range(min(self.num_workers, len(retry)))]
            try:
                again, soft, late_again = self._attempt(retry, budget, fresh, lambda: self._spawn(budget), hard)
            finally:
                stop_workers(fresh)
            results.update(again)
            late |= late_again
        else:
            retry = []
        late |= soft
        self.stats.retried += len(retry)
        self.stats.timed_out += len(late)
        return results, {item[0] for item in retry}, late

    def _attempt(self, items: list[tuple], budget: float, workers: list[WorkerProcess], spawn,
                 hard_timeout_s: float) -> tuple[dict[int, float], set[int], set[int]]:
        """({job: reward}, the jobs whose soft ``budget`` ran out, the jobs killed at the hard limit) of one pass,
        on ``workers`` (in this process when there are none, with the soft budget on the main thread only)."""
        if not items:
            return {}, set(), set()
        if not workers:
            soft = budget if soft_timeout_usable() else None
            results, out_of_time = {}, set()
            for job, content, parts, forms in items:
                results[job], timed_out = verify_boxes(content, parts, forms, soft)
                if timed_out:
                    out_of_time.add(job)
            self.stats.soft_timeouts += len(out_of_time)
            return results, out_of_time, set()
        run = self._run_pool(items, workers=workers, spawn=spawn, hard_timeout_s=hard_timeout_s)
        return run.results, run.soft_timed_out, {job for job, why in run.failures.items() if why == "timeout"}

    def _run_pool(self, items: list[tuple], wait_for_start: bool = False, *, workers: list[WorkerProcess] | None = None,
                  spawn=None, hard_timeout_s: float | None = None) -> PoolRun:
        """The finished pass scoring (job, last box, parts, gold forms) items on ``workers`` (the pool's own by
        default); its ``results`` are {job: reward}."""
        run = PoolRun(
            self._workers if workers is None else workers, items, spawn=spawn or self._spawn,
            chunk_size=self.chunk_size, hard_timeout_s=hard_timeout_s or self.hard_timeout_s,
            start_timeout_s=self.start_timeout_s, wait_for_start=wait_for_start,
        )
        try:
            run.run()
            return run
        finally:
            stats = self.stats
            stats.soft_timeouts += run.soft_timeouts
            stats.hard_timeouts += run.hard_timeouts
            stats.crashes += run.crashes
            stats.restarts += run.restarts
