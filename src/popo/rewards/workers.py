"""The verifier pool's moving parts: one worker process (`_Worker`), stopping workers, and one scoring
pass over a batch of items (`_PoolRun`: dispatch in chunks, collect results, replace a worker that hangs
or dies). `popo.rewards.pool.MathVerifier` owns the workers and drives these."""

from __future__ import annotations

import collections
import math as _math
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from popo.rewards.pool import MathVerifier

_CHUNK_CHARS = 32_000  # keeps one chunk message well inside a pipe buffer


class _Worker:
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


def _stop_worker(w: _Worker, grace_s: float) -> None:
    """Close the pipes (an idle worker exits on EOF), then kill whatever is still running, and reap."""
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


def _shutdown_workers(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            w.cmd.close()  # idle workers see EOF and exit while we attend to the others
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        _stop_worker(w, max(0.0, deadline - time.monotonic()))
    workers.clear()


class _PoolRun:
    """One ``score`` call on the pool: the chunk queue, the results, and the per-item kill rules.

    Workers stream back one result per item, so the parent always knows which item a worker is on.
    A worker silent for ``hard_timeout_s`` is killed and replaced: the item it was on gets 0 and the
    rest of its chunk goes back to the front of the queue. A worker that dies on its own gets its item
    retried once, alone, on a fresh worker; a second death gives that item 0. A worker killed by a signal
    while starting is replaced (up to 3 times a call); one that exits on its own while starting is an error.
    """

    def __init__(self, verifier: MathVerifier, items: list, wait_for_start: bool):
        self.v = verifier
        self.workers = verifier._workers  # replaced in place by MathVerifier._replace
        self.results: dict[int, float] = {}
        self.crashed: set[int] = set()
        self.start_deaths = 0  # workers killed by a signal during start-up in this call
        self.wait_for_start = wait_for_start
        # a few chunks per worker keep the load balanced; each holds at most chunk_size items and about
        # _CHUNK_CHARS characters
        size = max(1, min(verifier.chunk_size, _math.ceil(len(items) / (4 * len(self.workers)))))
        self.queue: collections.deque[list] = collections.deque()
        chunk: list = []
        chars = 0
        for item in items:
            item_chars = len(item[1]) + sum(len(g) for g in item[2])
            if chunk and (len(chunk) >= size or chars + item_chars > _CHUNK_CHARS):
                self.queue.append(chunk)
                chunk, chars = [], 0
            chunk.append(item)
            chars += item_chars
        if chunk:
            self.queue.append(chunk)

    def pending(self) -> bool:
        if self.queue or any(w.chunk for w in self.workers):
            return True
        return self.wait_for_start and not all(w.ready for w in self.workers)

    def _requeue_rest(self, w: _Worker) -> None:
        """Put the items after the current one back at the front of the queue; the worker is free."""
        rest = w.chunk[w.pos + 1 :] if w.chunk else []
        if rest:
            self.queue.appendleft(rest)
        w.chunk = None

    def _on_hard_timeout(self, idx: int) -> None:
        w = self.workers[idx]
        self.v.stats.hard_timeouts += 1
        if w.chunk and w.pos < len(w.chunk):
            self.results[w.chunk[w.pos][0]] = 0.0
        self._requeue_rest(w)
        self.v._replace(idx)

    def _on_death(self, idx: int) -> None:
        w = self.workers[idx]
        if not w.ready:
            try:
                code = w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self.start_deaths += 1
            if code is not None and code < 0 and self.start_deaths <= 3:
                self.v._replace(idx)  # killed from outside while starting (e.g. the OOM killer): retry
                return
            raise RuntimeError(
                f"a math verifier worker exited during start-up (exit code {code}); "
                "set POPO_VERIFIER_DEBUG=1 to see its stderr"
            )
        if w.chunk and w.pos < len(w.chunk):
            item = w.chunk[w.pos]
            self._requeue_rest(w)
            if item[0] in self.crashed:  # it killed a fresh worker too
                self.v.stats.crashes += 1
                self.results[item[0]] = 0.0
            else:  # maybe not its fault (e.g. killed from outside): one more try, alone
                self.crashed.add(item[0])
                self.queue.appendleft([item])
        w.chunk = None
        self.v._replace(idx)

    def _dispatch(self) -> None:
        now = time.monotonic()
        for idx, w in enumerate(self.workers):
            if w.ready and w.chunk is None and self.queue:
                chunk = self.queue.popleft()
                try:
                    w.cmd.send(("score", chunk))
                except OSError:  # it died while idle: start another and retry the chunk
                    self.queue.appendleft(chunk)
                    self.v._replace(idx)
                    continue
                w.chunk, w.pos, w.deadline = chunk, 0, now + self.v.hard_timeout_s

    def _receive(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "result":
            _, job, reward, timed_out = msg
            self.results[job] = float(reward)
            self.v.stats.soft_timeouts += bool(timed_out)
            w.pos += 1
            if w.chunk is None or w.pos >= len(w.chunk):
                w.chunk = None
            else:
                w.deadline = time.monotonic() + self.v.hard_timeout_s
        elif kind == "ready":
            w.ready = True
        elif kind == "error":
            raise RuntimeError(f"a math verifier worker failed to start:\n{msg[1]}")

    def loop(self) -> None:
        from multiprocessing.connection import wait

        workers = self.workers
        while self.pending():
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
                        f"a math verifier worker did not start within {self.v.start_timeout_s:.0f} s"
                    )
