"""User reward functions in worker processes: :class:`FunctionPool`.

``reward.functions`` entries of the form ``package.module:function`` name functions with TRL's signature,
``f(prompts, completions, **columns) -> list[float | None]``. They are user code, so they never run in
the training process: each worker (:mod:`popo.rewards.sandbox` running
:mod:`popo.rewards.function_worker`) imports them and calls them on batches of rows, with a soft time limit
per call inside the worker, a hard one enforced by the parent (which kills and replaces a stuck worker)
and an address-space cap. A call that hangs, raises, crashes its worker or returns something other than
one number or None per completion comes back as a failure, never as an exception; the caller
(:class:`popo.rewards.composite.CompositeReward`) gives those items reward 0 and counts them.

The workers are started, and the functions imported and their signatures checked, when the pool is made
(:meth:`FunctionPool.wait_ready`): a module that does not import, a missing function or a wrong signature
is a :class:`popo.errors.ConfigError` naming ``reward.functions`` before any training starts.
"""

from __future__ import annotations

import json
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from popo.errors import ConfigError
from popo.rewards import function_worker
from popo.rewards.sandbox import worker_command
from popo.rewards.workers import PoolRun, WorkerProcess, start_worker, stop_workers

__all__ = ["Call", "FunctionPool"]

Call = tuple[int, list, list, dict]
"""One call of a user function: (function index, prompts, completions, {column: values})."""


class FunctionPool:
    """Worker processes that call the user reward functions ``specs`` (``package.module:function``).

    Args:
        specs: the functions, in ``reward.functions`` order (built-in names excluded).
        columns: the dataset's column names (a function may require any of them as an argument).
        num_workers: worker processes (at least 1).
        timeout_s: soft limit of one call; the worker is killed ``0.5 * timeout_s + 2`` s later.
        max_memory_mb: address-space limit of each worker (0: none).
        start_timeout_s: how long a worker may take to import the functions.

    :meth:`run` is serialised by a lock; workers stop on :meth:`close`, when the pool is garbage collected,
    or when the parent dies.
    """

    def __init__(self, specs: Sequence[str], *, columns: Sequence[str] = (), num_workers: int = 2,
                 timeout_s: float = 10.0, max_memory_mb: int = 4096, start_timeout_s: float = 120.0):
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError(f"num_workers must be >= 1 and timeout_s > 0, got {num_workers}, {timeout_s}")
        self.specs = list(specs)
        self.timeout_s, self.hard_timeout_s = float(timeout_s), 1.5 * float(timeout_s) + 2.0
        self.max_memory_mb, self.start_timeout_s = int(max_memory_mb), float(start_timeout_s)
        self.restarts = 0
        self._job_args = json.dumps({"sys_path": [p for p in sys.path if isinstance(p, str)],
                                     "functions": self.specs, "columns": sorted(columns), "timeout_s": timeout_s})
        self._lock = threading.Lock()
        self._workers: list[WorkerProcess] = []
        self._finalizer = weakref.finalize(self, stop_workers, self._workers)
        for _ in range(num_workers):
            self._workers.append(self._spawn())

    def _spawn(self) -> WorkerProcess:
        return start_worker(lambda cmd_fd, res_fd: worker_command(
            function_worker.__file__, cmd_fd, res_fd, self.max_memory_mb, self._job_args), self.start_timeout_s)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalizer()

    def __enter__(self) -> FunctionPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def wait_ready(self) -> None:
        """Block until every worker has imported the functions; a set-up problem is a ConfigError."""
        with self._lock:
            self._pass([], wait_for_start=True)

    def run(self, calls: Sequence[Call]) -> list[tuple[str, Any]]:
        """The outcome of each call, in order: ``("ok", [float | None, ...])``, or ``(kind, message)`` with
        kind ``error`` (it raised or returned something unusable), ``timeout`` or ``crash``."""
        if not self._workers:
            raise RuntimeError("this FunctionPool is closed")
        items = [(job, *call) for job, call in enumerate(calls)]
        with self._lock:
            results, failures = self._pass(items)
        out = []
        for job in range(len(items)):
            if job in results:
                out.append(tuple(results[job]))
            elif failures.get(job) == "crash":
                out.append(("crash", "its worker process died (twice) during the call"))
            else:
                out.append(("timeout", f"did not return within the hard limit of {self.hard_timeout_s:g} s"))
        return out

    def _pass(self, items: list[tuple], wait_for_start: bool = False) -> tuple[dict, dict]:
        run = PoolRun(self._workers, items, spawn=self._spawn, chunk_size=1, hard_timeout_s=self.hard_timeout_s,
                      start_timeout_s=self.start_timeout_s, wait_for_start=wait_for_start,
                      item_chars=lambda item: 1, label="reward function")
        try:
            return run.run(), run.failures
        except RuntimeError as err:
            raise ConfigError(f"reward.functions: {_setup_problem(str(err))}") from None
        finally:
            self.restarts += run.restarts


def _setup_problem(text: str) -> str:
    """The one line that says why a worker could not start (the last line of its traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    _, marker, message = last.partition(f"{function_worker.RewardSetupError.__name__}: ")
    return message if marker else last
