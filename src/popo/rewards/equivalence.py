"""Whether a box content is equivalent to a gold answer, decided by ``math-verify``, and the verifier
worker process that decides it for :class:`popo.rewards.MathVerifier`.

Both sides are wrapped as ``\\boxed{...}`` and handed to ``math_verify.parse``; the answer earns 1.0 when
``math_verify.verify`` accepts it against any parsed gold alternative. On the public benchmark golds
(AIME, AMC, MATH-500, Minerva, OlympiadBench, GSM8K) this form parses every gold and verifies every gold
against itself. Model text is only ever data here: it is parsed by ``math-verify``/``latex2sympy`` and
never passed to ``eval``/``exec``.

Each check has a soft budget (``timeout_s``) enforced through math-verify's own ``SIGALRM`` timeouts.
``SIGALRM`` only works in the main thread, so callers check :func:`soft_timeout_usable` and pass
``timeout_s=None`` elsewhere. The soft budget cannot stop work inside C code (a power tower makes SymPy
build a number with billions of digits), hence the worker processes, which the parent kills when they
overrun a hard limit (:mod:`popo.rewards.workers`).

This is the only file a worker loads: it starts as ``python -P -c <bootstrap> <this file> ...`` (see
:func:`worker_command`) and loads this file by path under a private module name, so a worker never
imports ``popo`` (nor torch) or the parent's ``__main__``. Hence the standard library only at the top,
and ``math_verify`` on first use.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
import warnings

__all__ = ["clear_gold_cache", "soft_timeout_usable", "verify_answer", "worker_command", "worker_main"]

# ----------------------------------------------------------------------------------------------------
# Checking one answer (in a worker, or in the calling process)
# ----------------------------------------------------------------------------------------------------


def _quiet_math_verify() -> None:
    """Keep math-verify / latex2sympy log records (some echo whole inputs) out of the console.

    Idempotent and cheap, so it runs before every verification (no "done once" flag to keep).
    """
    for name in ("math_verify", "latex2sympy2_extended"):
        logger = logging.getLogger(name)
        if logger.level != logging.CRITICAL + 1:  # setLevel clears every logger's cache: skip when set
            logger.setLevel(logging.CRITICAL + 1)


class _SoftTimeout(Exception):
    pass


def _remaining(deadline: float | None) -> int | None:
    """Seconds to hand to a math-verify call: None (no alarm) or a whole number >= 1."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _SoftTimeout
    return max(1, math.ceil(left))


@functools.cache
def _math_verify():
    """(parse, verify, TimeoutException) from math-verify, imported on first use.

    Import errors propagate (and are not cached): a broken installation must fail loudly, not score
    everything 0.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    return parse, verify, TimeoutException


def _mv_parse(content: str, deadline: float | None) -> list:
    """math_verify.parse of ``\\boxed{content}``; [] when it cannot be parsed."""
    parse, _, TimeoutException = _math_verify()
    secs = _remaining(deadline)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # parsing_timeout=None disables math-verify's SIGALRM (needed off the main thread)
            boxed = "\\boxed{" + content + "}"
            return parse(boxed, parsing_timeout=secs, raise_on_error=True)  # type: ignore[arg-type]
    except TimeoutException:
        raise _SoftTimeout from None
    except Exception:
        return []


def _mv_equal(gold, pred, deadline: float | None) -> bool:
    _, verify, TimeoutException = _math_verify()
    secs = _remaining(deadline)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(verify(gold, pred, timeout_seconds=secs, raise_on_error=True))
    except TimeoutException:
        raise _SoftTimeout from None
    except Exception:
        return False


class _GoldKey:
    """A gold answer as a cache key: equal and hashed by the gold alone, carrying the call's deadline."""

    __slots__ = ("gold", "deadline")

    def __init__(self, gold: str, deadline: float | None):
        self.gold, self.deadline = gold, deadline

    def __eq__(self, other) -> bool:
        return isinstance(other, _GoldKey) and other.gold == self.gold

    def __hash__(self) -> int:
        return hash(self.gold)


@functools.lru_cache(maxsize=4096)  # thread-safe; a soft timeout raises, so it is never cached
def _parse_gold_once(key: _GoldKey) -> list:
    return _mv_parse(key.gold, key.deadline)


def _parsed_gold(gold: str, deadline: float | None) -> list:
    """math_verify.parse of a gold answer, cached by gold (the same golds recur across a run)."""
    return _parse_gold_once(_GoldKey(gold, deadline))


def clear_gold_cache() -> None:
    """Forget the parsed golds of this process (benchmarks use it to time cold runs)."""
    _parse_gold_once.cache_clear()


def verify_answer(content: str, golds: tuple[str, ...], timeout_s: float | None) -> tuple[float, bool]:
    """(reward, whether the soft budget ran out) for a box content against gold box contents.

    ``content`` is what a completion's last box holds (:func:`popo.rewards.answers.extract_answer`) and
    ``golds`` the accepted alternatives, each already passed through
    :func:`popo.rewards.answers.gold_content`. The reward is 1.0 when math-verify finds the content
    equivalent to any of them, else 0.0. ``timeout_s=None`` runs without a soft limit (no SIGALRM;
    required off the main thread). Never raises for model input; raises ImportError when math-verify
    cannot be imported.
    """
    _quiet_math_verify()
    _math_verify()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        pred = _mv_parse(content, deadline)
        if not pred:
            return 0.0, False
        for gold in golds:
            for g in _parsed_gold(gold, deadline):
                for p in pred:
                    if _mv_equal(g, p, deadline):
                        return 1.0, False
        return 0.0, False
    except _SoftTimeout:
        return 0.0, True
    except Exception:  # RecursionError, MemoryError, OverflowError, ...: model input never raises
        return 0.0, False


def soft_timeout_usable() -> bool:
    """Whether :func:`verify_answer` may be given a soft ``timeout_s`` here: the platform has SIGALRM
    and this is the main thread."""
    import signal

    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------------
# The worker process
# ----------------------------------------------------------------------------------------------------

# run by `python -P -c`: loads the file named by argv[1] under a private name and enters its worker_main
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_popo_verifier_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod.worker_main(sys.argv[2:])\n"
)


def worker_command(cmd_fd: int, res_fd: int, timeout_s: float, max_memory_mb: int) -> list[str]:
    """The command line of a worker process started by this process.

    The worker reads chunks of ``(job, content, golds)`` items from the pipe end ``cmd_fd`` and writes its
    messages to ``res_fd`` (see :func:`worker_main`); both descriptors must be passed to the child.
    ``timeout_s`` is the soft budget per item, ``max_memory_mb`` its address-space limit (0: none).
    """
    return [
        sys.executable, "-P", "-c", _BOOTSTRAP, os.path.abspath(__file__),
        str(cmd_fd), str(res_fd), str(os.getpid()), repr(float(timeout_s)), str(int(max_memory_mb)),
    ]


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
    """Body of a worker process, with the arguments :func:`worker_command` put after the file name.

    Sends ``("ready", pid)`` once math-verify works (or ``("error", traceback)`` and returns), then for
    each ``("score", [(job, content, golds), ...])`` message sends one ``("result", job, reward,
    timed_out)`` per item, in order. Returns when the command pipe closes or another message arrives.
    """
    from multiprocessing.connection import Connection

    cmd_fd, res_fd, parent_pid = int(argv[0]), int(argv[1]), int(argv[2])
    timeout_s, max_memory_mb = float(argv[3]), int(argv[4])
    _die_with_parent(parent_pid)
    cmd = Connection(cmd_fd, writable=False)
    res = Connection(res_fd, readable=False)
    try:
        warnings.simplefilter("ignore")
        _quiet_math_verify()
        # import math-verify and load the LaTeX parser; a worker that cannot verify 2/4 = 0.5 is broken
        if verify_answer("\\frac{2}{4}", ("0.5",), max(timeout_s, 30.0))[0] != 1.0:
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
            reward, timed_out = verify_answer(content, golds, soft)
            res.send(("result", job, reward, timed_out))
