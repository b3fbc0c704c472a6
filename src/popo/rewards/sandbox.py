"""The body of every reward worker process: isolation, the pipe protocol and the scoring loop.

A worker is started as ``python -P -c <bootstrap> <this file> <job file> <cmd fd> <res fd> <parent pid>
<memory MB> <job args...>`` (:func:`worker_command`). The bootstrap loads this file by path under a private
module name, and :func:`main` loads the *job file* the same way and asks it for a handler
(``worker_setup(job_args) -> handle``). Two job files exist: :mod:`popo.rewards.equivalence` (the math
check) and :mod:`popo.rewards.function_worker` (user reward functions). Loading by path means a worker
never imports ``popo`` (nor torch) or the parent's ``__main__``: this file uses the standard library only.

Protocol (``multiprocessing.connection.Connection`` objects on two pipes): the worker sends ``("ready",
pid)`` once the handler is set up and its memory limit applied, or ``("error", traceback)`` and exits;
then for each ``("score", [item, ...])`` message it sends one ``("result", job, value, timed_out)`` per
item, in order, where ``item[0]`` is the job number and ``(value, timed_out) = handle(item)``. It exits
when the command pipe closes or another message arrives, and is SIGKILLed by Linux when its parent dies.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main", "worker_command"]

# run by `python -P -c`: loads the file named by argv[1] under a private name and enters its main
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_popo_reward_sandbox', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod.main(sys.argv[2:])\n"
)


def worker_command(job_file: str, cmd_fd: int, res_fd: int, max_memory_mb: int, *job_args: str) -> list[str]:
    """The command line of a worker that runs ``job_file``'s handler, started by this process.

    The worker reads chunks of items from the pipe end ``cmd_fd`` and writes its messages to ``res_fd``;
    both descriptors must be passed to the child. ``max_memory_mb`` is its address-space limit (0: none),
    applied after the handler is set up; ``job_args`` are handed to ``worker_setup``.
    """
    return [sys.executable, "-P", "-c", _BOOTSTRAP, os.path.abspath(__file__), os.path.abspath(job_file),
            str(cmd_fd), str(res_fd), str(os.getpid()), str(int(max_memory_mb)), *job_args]


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent goes away (a stuck worker never reads EOF)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _limit_memory(max_memory_mb: int) -> None:
    if max_memory_mb <= 0:
        return
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = max_memory_mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except Exception:
        pass


def _load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_popo_reward_job", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> None:
    """Body of a worker process, with the arguments :func:`worker_command` put after this file's name."""
    from multiprocessing.connection import Connection

    job_file, (cmd_fd, res_fd, parent_pid, max_memory_mb) = argv[0], (int(a) for a in argv[1:5])
    _die_with_parent(parent_pid)
    cmd = Connection(cmd_fd, writable=False)
    res = Connection(res_fd, readable=False)
    try:
        handle = _load(job_file).worker_setup(argv[5:])
        _limit_memory(max_memory_mb)
    except BaseException:
        import traceback

        res.send(("error", traceback.format_exc()))
        return
    res.send(("ready", os.getpid()))
    while True:
        try:
            msg = cmd.recv()
        except (EOFError, OSError):
            break  # the parent closed the pipe or died
        if msg[0] != "score":
            break
        for item in msg[1]:
            value, timed_out = handle(item)
            res.send(("result", item[0], value, timed_out))
