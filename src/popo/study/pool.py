"""The worker pool behind `--workers` (`popo compare`, `popo sweep`; `popo demo` and docs/results/pass_at_k.py use
`worker_pool` too), and how a study running in it stops.

`run_in_pool` hands a job to a worker only when one is free, so no job ever waits inside the pool where a stop
could not reach it. SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`) to the study's process: no further job
starts; the stop file is written and the jobs in progress are sent SIGINT (a run stops at the end of its step,
with a checkpoint, through the trainer's own handler); once they have returned, the workers are closed (killed
when one has not exited after `CLOSE_S`) and `KeyboardInterrupt` is raised (the command line turns it into one
line and exit status 130). The study's process takes the signals as a flag, never as an exception raised inside
the pool's own locks (which could leave it waiting forever), so a second Ctrl-C changes nothing. Workers start
with both signals blocked, then ignore them except while they run a job (`job_running`); a job that a worker
takes after the stop file was written does not start (the caller's job checks the file). A job that fails stops
the others the same way, and its error is raised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from multiprocessing.connection import wait as wait_for_exit
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.5
"""How often the study looks at its stop flag while it waits for runs."""
CLOSE_S = 10.0
"""How long the workers get to exit once their jobs have returned before they are killed."""


class JobSignals:
    """A pool worker's SIGINT/SIGTERM handler: `KeyboardInterrupt` while the worker runs a job (once: a second
    signal in the same job is ignored), nothing while it is idle."""

    def __init__(self) -> None:
        self.busy = False

    def __call__(self, signum, frame) -> None:
        if self.busy:
            self.busy = False
            raise KeyboardInterrupt


def _start_worker(threads: int, jobs_take_interrupts: bool = False) -> None:
    if jobs_take_interrupts:  # Ctrl-C reaches every process of the terminal's group: an idle worker ignores it
        handler = JobSignals()
        for s in STOP_SIGNALS:
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the study while it started us
    import torch

    from popo.build import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()  # no progress bars in the logs


def worker_pool(workers: int, threads: int, *, jobs_take_interrupts: bool = False) -> ProcessPoolExecutor:
    """`workers` spawned processes, each on `threads` torch threads and without library progress bars. With
    `jobs_take_interrupts`, a worker ignores SIGINT and SIGTERM except inside `job_running`."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(threads, jobs_take_interrupts))


@contextlib.contextmanager
def job_running() -> Iterator[None]:
    """In a `jobs_take_interrupts` worker: SIGINT or SIGTERM raise `KeyboardInterrupt` inside the block (a
    trainer's own handler takes them while it runs). Elsewhere (no pool) nothing changes."""
    handler = signal.getsignal(signal.SIGINT)
    if not isinstance(handler, JobSignals):
        yield
        return
    handler.busy = True
    try:
        yield
    finally:
        handler.busy = False


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block SIGTERM raises `KeyboardInterrupt`, as Ctrl-C does (runs trained in this process, one
    after the other; a trainer's own handler takes both signals while it runs). Outside the main thread,
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _StopFlag:
    """Within `with`: SIGINT and SIGTERM to this process record the first signal in `signum` (main thread only;
    elsewhere the handlers stay as they are)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _take(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._take) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered at the end of the block): a worker process started inside it
    starts with them blocked, so a Ctrl-C cannot kill it before it has set its handlers."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_in_pool(fn: Callable[..., dict], calls: list[tuple], *, workers: int, threads: int, stop_file: Path,
                finished: Callable[[dict], None], log: Callable[[str], None]) -> None:
    """`fn(*call)` for every call, in `workers` processes on `threads` torch threads each, a call handed out only
    when a worker is free; `finished` gets each result. The stop rules are the module docstring's; `fn` itself
    must run inside `job_running` and not start when `stop_file` exists."""
    todo, running = list(calls), {}
    stopping, interrupted, error = False, False, None
    stop_file.unlink(missing_ok=True)
    with _StopFlag() as stop:
        with _signals_blocked():
            pool = worker_pool(workers, threads, jobs_take_interrupts=True)
        try:
            while todo or running:
                if not stopping and (stop.signum or interrupted or error):
                    stopping = True
                    todo.clear()
                    stop_file.touch()  # first: a job a worker takes from now on does not start,
                    _signal_workers(pool, signal.SIGINT)  # then the jobs in progress stop
                    why = "a run failed" if error else "interrupted"
                    log(f"stopping ({why}): {len(running)} runs in progress save a checkpoint at the end of their "
                        "step, and no other run starts")
                while todo and len(running) < workers:
                    with _signals_blocked():  # a worker process may start here
                        future = pool.submit(fn, *todo[0])
                    running[future] = todo.pop(0)
                done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    interrupted, error = _collect(future, finished, interrupted, error, stop.signum, log)
        finally:
            _close(pool)
            stop_file.unlink(missing_ok=True)
    if error is not None:
        raise error
    if stop.signum is not None or interrupted:
        raise KeyboardInterrupt


def _collect(future: Future, finished: Callable[[dict], None], interrupted: bool, error: BaseException | None,
             signum: int | None, log: Callable[[str], None]) -> tuple[bool, BaseException | None]:
    """Hand a finished job's result to `finished`; a job stopped by a signal sets `interrupted`, the first job
    that failed sets `error` (after a signal to the study, a failure is taken for the interruption it likely
    is, and only logged)."""
    try:
        result = future.result()
    except KeyboardInterrupt:
        return True, error
    except Exception as err:
        if signum is not None:
            log(f"a run ended with an error while it stopped: {type(err).__name__}: {err}")
            return True, error
        return interrupted, error or err
    finished(result)
    return interrupted, error


def _signal_workers(pool: ProcessPoolExecutor, signum: int) -> None:
    """`signum` to every worker process (the pool keeps them in `_processes`; there is no public way)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _close(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting on its internals; a worker still alive after `CLOSE_S` is killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + CLOSE_S
    alive = {p.sentinel: p for p in processes}
    while alive and time.monotonic() < deadline:
        for sentinel in wait_for_exit(list(alive), timeout=max(0.0, deadline - time.monotonic())):
            del alive[sentinel]
    for process in alive.values():
        with contextlib.suppress(ProcessLookupError):
            process.kill()
