"""The run folder's guard: one run per folder, one live process per run.

A folder that already holds a run (metrics or checkpoints) is refused unless the run is resumed
(`popo train --resume DIR`) or `train.overwrite=true` says to replace it; replacing removes the old
checkpoints and event files first, so nothing of the earlier run can be mistaken for the new one. The
process that writes the folder holds an exclusive `fcntl` lock on `DIR/.lock` (the operating system
releases it when the process ends, also when it is killed), and the file names the holder's PID, so a
second process started on the same folder is refused with a message naming it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from popo.errors import SetupError

LOCK_NAME = ".lock"


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` has metrics or checkpoints of a run."""
    metrics = run_dir / "metrics.jsonl"
    return (metrics.is_file() and metrics.stat().st_size > 0) or any((run_dir / "checkpoints").glob("step-*"))


def check(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, to start a run in a folder that holds another one (read-only)."""
    if not resume and not overwrite and holds_a_run(run_dir):
        raise SetupError(f"{run_dir} already holds a run: continue it with `popo train --resume {run_dir}`, "
                         "start this one in another folder (train.out_dir=...), or replace it with "
                         "train.overwrite=true")


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> "RunLock":
    """Lock `run_dir` for this process (creating it), check again under the lock, and with `overwrite`
    remove the replaced run's checkpoints and event files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        check(run_dir, resume=resume, overwrite=overwrite)
    except SetupError:
        lock.release()
        raise
    if overwrite and not resume:
        for stale in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    return lock


class RunLock:
    """An exclusive lock on `run_dir/.lock`, held until `release` (or the end of the process)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise SetupError(f"{run_dir} is in use by another popo process (PID {holder}): wait for it to "
                             "finish or stop it, or use another train.out_dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
