"""Reward worker processes as the parent sees them: starting and stopping them (:class:`WorkerProcess`) and
one scoring pass over a batch of items (:class:`PoolRun`: dispatch in chunks, collect results, replace a
worker that hangs or dies). :class:`popo.rewards.MathVerifier` and :class:`popo.rewards.functions.FunctionPool`
own workers and drive these; a worker is :mod:`popo.rewards.sandbox` running a job file's handler
(:mod:`popo.rewards.equivalence` or :mod:`popo.rewards.function_worker`)."""

from __future__ import annotations

import collections
import math
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PoolRun", "WorkerProcess", "start_worker", "stop_worker", "stop_workers"]

_CHUNK_CHARS = 32_000  # keeps one chunk message well inside a pipe buffer


class WorkerProcess:
    """One worker process: the process, its command and result pipes, and what it is doing.

    ``ready`` turns true when the worker reports that math-verify works; ``chunk`` is the list of items it
    is scoring (None when idle), ``pos`` the index of the item it is on, ``deadline`` when that item runs
    out of time and ``start_deadline`` when a worker that is not ready yet counts as failed.
    """

    __slots__ = ("proc", "cmd", "res", "ready", "chunk", "pos", "deadline", "start_deadline")

    def __init__(self, proc, cmd, res, start_deadline: float):
        self.proc = proc
        self.cmd = cmd
        self.res = res
        self.ready = False
        self.chunk: list | None = None
        self.pos = 0
        self.deadline = 0.0
        self.start_deadline = start_deadline

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_worker(command: Callable[[int, int], list[str]], start_timeout_s: float) -> WorkerProcess:
    """Start a worker process (without waiting for it to be ready) and return its handle.

    ``command(cmd_fd, res_fd)`` is its command line (:func:`popo.rewards.sandbox.worker_command`), given the
    pipe ends the child reads and writes; ``start_timeout_s`` is how long it may take to report ready. The
    worker's stderr is discarded unless the environment variable ``POPO_VERIFIER_DEBUG`` is set.
    """
    from multiprocessing.connection import Connection

    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    debug = bool(os.environ.get("POPO_VERIFIER_DEBUG"))
    try:
        proc = subprocess.Popen(
            command(cmd_r, res_w),
            pass_fds=(cmd_r, res_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if debug else subprocess.DEVNULL,
            close_fds=True,
        )
    except BaseException:
        for fd in (cmd_r, cmd_w, res_r, res_w):
            os.close(fd)
        raise
    os.close(cmd_r)
    os.close(res_w)
    return WorkerProcess(
        proc,
        Connection(cmd_w, readable=False),
        Connection(res_r, writable=False),
        time.monotonic() + start_timeout_s,
    )


def stop_worker(w: WorkerProcess, grace_s: float) -> None:
    """Close the pipes (an idle worker exits on EOF), wait up to ``grace_s`` seconds, then kill whatever
    is still running, and reap it."""
    for conn in (w.cmd, w.res):
        try:
            conn.close()
        except OSError:
            pass
    try:
        w.proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if w.proc.poll() is None:
        try:
            w.proc.kill()
        except OSError:
            pass
        try:
            w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def stop_workers(workers: list[WorkerProcess]) -> None:
    """Stop all ``workers`` within about two seconds together (then kill the rest) and empty the list."""
    for w in workers:
        try:
            w.cmd.close()  # idle workers see EOF and exit while we attend to the others
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        stop_worker(w, max(0.0, deadline - time.monotonic()))
    workers.clear()


def _math_item_chars(item: tuple) -> int:  # (job, last box, parts, gold forms)
    return len(item[1]) + sum(map(len, item[2])) + sum(len(g) for form in item[3] for g in form)


class PoolRun:
    """One scoring pass over items ``(job, ...)`` on the pool (for the math verifier ``(job, last box, parts,
    gold forms)``): the chunk queue, the results, and the per-item kill rules. Call :meth:`run` once.

    Workers stream back one result per item, so the parent always knows which item a worker is on.
    A worker silent for ``hard_timeout_s`` is killed and replaced: the item it was on gets no result
    (``failures[job] = "timeout"``) and the rest of its chunk goes back to the front of the queue. A
    worker that dies on its own gets its item retried once, alone, on a fresh worker; a second death
    leaves that item without a result (``failures[job] = "crash"``). A worker killed by a signal
    while starting is replaced (up to 3 times a pass); one that exits on its own while starting is an
    error. With ``wait_for_start`` the pass also lasts until every worker is ready.

    ``workers`` is the pool's list, in which replaced workers are swapped in place; ``spawn`` starts a new
    worker; ``item_chars`` sizes an item for chunking; ``label`` names the workers in errors. The counters
    ``soft_timeouts``, ``hard_timeouts``, ``crashes`` and ``restarts`` (workers
    started to replace a killed or dead one) count this pass only; ``soft_timed_out`` holds the jobs whose
    result came back marked as out of its soft budget.
    """

    def __init__(
        self,
        workers: list[WorkerProcess],
        items: list[tuple],
        *,
        spawn: Callable[[], WorkerProcess],
        chunk_size: int,
        hard_timeout_s: float,
        start_timeout_s: float,
        wait_for_start: bool = False,
        item_chars: Callable[[tuple], int] = _math_item_chars,
        label: str = "math verifier",
    ):
        if not workers:
            raise ValueError("a pool run needs at least one worker")
        self.workers = workers
        self.spawn = spawn
        self.hard_timeout_s = hard_timeout_s
        self.start_timeout_s = start_timeout_s
        self.wait_for_start = wait_for_start
        self.label = label
        self.results: dict[int, Any] = {}
        self.failures: dict[int, str] = {}
        self.soft_timeouts = self.hard_timeouts = self.crashes = self.restarts = 0
        self.soft_timed_out: set[int] = set()
        self.crashed: set[int] = set()
        self.start_deaths = 0  # workers killed by a signal during start-up in this pass
        # a few chunks per worker keep the load balanced; each holds at most chunk_size items and about
        # _CHUNK_CHARS characters
        size = max(1, min(chunk_size, math.ceil(len(items) / (4 * len(workers)))))
        self.queue: collections.deque[list] = collections.deque()
        chunk: list = []
        chars = 0
        for item in items:
            size_of = item_chars(item)
            if chunk and (len(chunk) >= size or chars + size_of > _CHUNK_CHARS):
                self.queue.append(chunk)
                chunk, chars = [], 0
            chunk.append(item)
            chars += size_of
        if chunk:
            self.queue.append(chunk)

    def run(self) -> dict[int, Any]:
        """Score every item and return ``{job: result}`` (jobs in ``failures`` have none).

        On an exception (including KeyboardInterrupt) every worker still holding a chunk is replaced
        before it propagates, so no late result of this pass can leak into the next one.
        """
        try:
            self._loop()
        except BaseException:
            for idx, w in enumerate(self.workers):
                if w.chunk:
                    w.chunk = None
                    try:
                        self.replace(idx)
                    except Exception:
                        pass
            raise
        return self.results

    def replace(self, idx: int) -> None:
        """Stop worker ``idx`` at once and put a freshly started one in its place."""
        stop_worker(self.workers[idx], 0.0)
        self.workers[idx] = self.spawn()
        self.restarts += 1

    def _pending(self) -> bool:
        if self.queue or any(w.chunk for w in self.workers):
            return True
        return self.wait_for_start and not all(w.ready for w in self.workers)

    def _requeue_rest(self, w: WorkerProcess) -> None:
        """Put the items after the current one back at the front of the queue; the worker is free."""
        rest = w.chunk[w.pos + 1 :] if w.chunk else []
        if rest:
            self.queue.appendleft(rest)
        w.chunk = None

    def _on_hard_timeout(self, idx: int) -> None:
        w = self.workers[idx]
        self.hard_timeouts += 1
        if w.chunk and w.pos < len(w.chunk):
            self.failures[w.chunk[w.pos][0]] = "timeout"
        self._requeue_rest(w)
        self.replace(idx)

    def _on_death(self, idx: int) -> None:
        w = self.workers[idx]
        if not w.ready:
            try:
                code = w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self.start_deaths += 1
            if code is not None and code < 0 and self.start_deaths <= 3:
                self.replace(idx)  # killed from outside while starting (e.g. the OOM killer): retry
                return
            raise RuntimeError(
                f"a {self.label} worker exited during start-up (exit code {code}); "
                "set POPO_VERIFIER_DEBUG=1 to see its stderr"
            )
        if w.chunk and w.pos < len(w.chunk):
            item = w.chunk[w.pos]
            self._requeue_rest(w)
            if item[0] in self.crashed:  # it killed a fresh worker too
                self.crashes += 1
                self.failures[item[0]] = "crash"
            else:  # maybe not its fault (e.g. killed from outside): one more try, alone
                self.crashed.add(item[0])
                self.queue.appendleft([item])
        w.chunk = None
        self.replace(idx)

    def _dispatch(self) -> None:
        now = time.monotonic()
        for idx, w in enumerate(self.workers):
            if w.ready and w.chunk is None and self.queue:
                chunk = self.queue.popleft()
                try:
                    w.cmd.send(("score", chunk))
                except OSError:  # it died while idle: start another and retry the chunk
                    self.queue.appendleft(chunk)
                    self.replace(idx)
                    continue
                w.chunk, w.pos, w.deadline = chunk, 0, now + self.hard_timeout_s

    def _receive(self, w: WorkerProcess, msg: tuple) -> None:
        kind = msg[0]
        if kind == "result":
            _, job, value, timed_out = msg
            self.results[job] = value
            if timed_out:
                self.soft_timeouts += 1
                self.soft_timed_out.add(job)
            w.pos += 1
            if w.chunk is None or w.pos >= len(w.chunk):
                w.chunk = None
            else:
                w.deadline = time.monotonic() + self.hard_timeout_s
        elif kind == "ready":
            w.ready = True
        elif kind == "error":
            raise RuntimeError(f"a {self.label} worker failed to start:\n{msg[1]}")

    def _loop(self) -> None:
        from multiprocessing.connection import wait

        workers = self.workers
        while self._pending():
            self._dispatch()
            waits = [w.deadline if w.chunk else w.start_deadline for w in workers if w.chunk or not w.ready]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
            by_conn = {w.res: idx for idx, w in enumerate(workers)}
            for conn in wait(list(by_conn), timeout=timeout):
                idx = by_conn[conn]
                try:
                    while conn.poll():
                        self._receive(workers[idx], conn.recv())
                except (EOFError, OSError):
                    self._on_death(idx)
            now = time.monotonic()
            for idx, w in enumerate(workers):
                if w.chunk and now > w.deadline:
                    self._on_hard_timeout(idx)
                elif not w.ready and now > w.start_deadline:
                    raise RuntimeError(
                        f"a {self.label} worker did not start within {self.start_timeout_s:.0f} s"
                    )
