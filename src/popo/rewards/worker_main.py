"""The verifier's worker process: started by :class:`popo.rewards.pool.MathVerifier` as
``python -P -c BOOTSTRAP <this file> <args...>``, it loads this file and the reward rules
(:mod:`popo.rewards.math`, the sibling file ``math.py``) by path under private module names, so the popo
package (and torch) is never imported in a worker. Standard library only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_popo_verifier_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod.worker_main(sys.argv[2:])\n"
)


def _reward_rules():
    """`math.py` next to this file, loaded by path once per process."""
    name = "_popo_verifier_rules"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "math.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]



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


def worker_main(argv: list[str]) -> None:
    """Worker loop: receive chunks of (job, content, golds), send back one result message per item."""
    from multiprocessing.connection import Connection

    cmd_fd, res_fd, parent_pid = int(argv[0]), int(argv[1]), int(argv[2])
    timeout_s, max_memory_mb = float(argv[3]), int(argv[4])
    _die_with_parent(parent_pid)
    cmd = Connection(cmd_fd, writable=False)
    res = Connection(res_fd, readable=False)
    try:
        warnings.simplefilter("ignore")
        rules = _reward_rules()
        rules._quiet_math_verify()
        # import math-verify and load the LaTeX parser; a worker that cannot verify 2/4 = 0.5 is broken
        if rules._verify_content("\\frac{2}{4}", ("0.5",), max(timeout_s, 30.0))[0] != 1.0:
            raise RuntimeError("self-check failed: math-verify does not accept \\frac{2}{4} = 0.5")
        _limit_memory(max_memory_mb)
    except BaseException:
        import traceback

        res.send(("error", traceback.format_exc()))
        return
    res.send(("ready", os.getpid()))
    soft = timeout_s if timeout_s > 0 else None
    # test hook: a worker dies abruptly on a box with exactly this content (simulates a crash in C code)
    crash_on = os.environ.get("POPO_VERIFIER_TEST_CRASH_ON")
    while True:
        try:
            msg = cmd.recv()
        except (EOFError, OSError):
            break  # the parent closed the pipe or died
        if msg[0] != "score":
            break
        for job, content, golds in msg[1]:
            if crash_on is not None and content == crash_on:
                os._exit(70)
            reward, timed_out = rules._verify_content(content, golds, soft)
            res.send(("result", job, reward, timed_out))
