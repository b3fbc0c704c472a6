"""Math answer rewards on top of ``math-verify``, with a worker pool that survives hostile completions.

The reward rule
---------------
A completion earns 1.0 only when the content of its **last** ``\\boxed{...}`` (or ``\\fbox{...}``) is
mathematically equivalent to a gold answer, as decided by ``math_verify.parse`` + ``math_verify.verify``.
Everything else earns 0.0:

* text outside the box earns nothing. ``math-verify`` on its own would also accept an unboxed
  "I think it is 5", which lets a policy skip the answer format (a reward hack), so only the box
  content is ever handed to it;
* an unfinished box (``\\boxed{5`` with no closing brace, or a bare ``\\boxed`` at the very end) earns 0,
  even if an earlier box was complete: the last box is the answer;
* an empty box, a box longer than ``max_answer_chars`` or nested deeper than ``max_depth`` earns 0.

The box is found by a brace-matching scan (escaped ``\\{`` / ``\\}`` are literal characters and do not
count), so nested braces such as ``\\boxed{\\frac{1}{2}}`` work. The brace-less form ``\\boxed 5`` (used
by a few MATH reference solutions) is read up to the next whitespace or ``$``.

Both sides are re-wrapped as ``\\boxed{...}`` before ``math_verify.parse``; on the public benchmark golds
(AIME, AMC, MATH-500, Minerva, OlympiadBench, GSM8K) this form parses every gold and verifies every gold
against itself. A gold may be a list of accepted alternatives (any match counts).

Safety
------
Model text is only ever treated as data: it is parsed by ``math-verify``/``latex2sympy`` and never
passed to ``eval``/``exec``. Parsing and comparing can still blow up (a power tower makes SymPy build a
number with billions of digits inside C code that no signal can interrupt), so :class:`MathVerifier`
runs the work in separate worker processes and the parent enforces a hard wall-clock limit per item:
a worker that overruns it is killed and replaced, and only the item it was stuck on gets 0.

Each item also has a soft budget (``timeout_s``) enforced inside the worker through math-verify's own
``SIGALRM`` timeouts. ``SIGALRM`` only works in the main thread, so :func:`math_reward` and the
in-process mode (``num_workers=0``) use it only when called from the main thread and otherwise run
without a soft limit.

The worker processes are started with ``python -P -c <bootstrap>`` and load *this file* by path, so they
import neither ``popo`` (and its torch-heavy trainers) nor the parent's ``__main__``; the module therefore
imports only the standard library at the top and ``math_verify`` lazily.
"""

from __future__ import annotations

import collections
import logging
import math as _math
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "MathVerifier",
    "VerifierStats",
    "last_boxed_content",
    "math_reward",
]

# ----------------------------------------------------------------------------------------------------
# Finding the last box
# ----------------------------------------------------------------------------------------------------

_BOX_MACROS = ("\\boxed", "\\fbox")
_OPENERS = {"{": "}", "(": ")", "[": "]"}
_CLOSERS = {"}", ")", "]"}

DEFAULT_MAX_CHARS = 32_768
DEFAULT_MAX_ANSWER_CHARS = 1_000
DEFAULT_MAX_DEPTH = 40
_CHUNK_CHARS = 32_000  # keeps one chunk message well inside a pipe buffer


def _last_box_start(text: str, end: int) -> tuple[int, int]:
    """(position of the macro, position just after its name) of the last box macro before ``end``.

    A macro name followed by a letter (``\\boxedfoo``) is a different control word and is skipped.
    Returns (-1, -1) when there is none.
    """
    while end > 0:
        best, name_len = -1, 0
        for macro in _BOX_MACROS:
            pos = text.rfind(macro, 0, end)
            if pos > best:
                best, name_len = pos, len(macro)
        if best < 0:
            return -1, -1
        after = best + name_len
        if after < len(text) and text[after].isalpha():
            end = best  # e.g. \boxedtext: not our macro, keep looking further left
            continue
        return best, after
    return -1, -1


def _find_last_box(text: str, max_len: int | None) -> tuple[str | None, str]:
    """The content of the last box in ``text`` and a status.

    status is ``"ok"`` or why there is no usable content: ``"no_box"``, ``"unclosed"`` (the last box is
    never closed), ``"empty"`` or ``"too_long"`` (more than ``max_len`` characters).
    """
    start, i = _last_box_start(text, len(text))
    if start < 0:
        return None, "no_box"
    n = len(text)
    j = i
    while j < n and text[j] in " \t\r\n":
        j += 1
    if j >= n:
        return None, "unclosed"  # "\boxed" is the last thing written
    if text[j] != "{":
        if j == i and not text[j].isdigit():
            # "\boxed." or "\boxed$": a macro without argument; treat like an unfinished box
            return None, "unclosed"
        # brace-less form "\boxed 5": read up to whitespace or "$"
        k = j
        while k < n and text[k] not in " \t\r\n$":
            k += 1
        content = text[j:k].strip()
        if max_len is not None and len(content) > max_len:
            return None, "too_long"
        return (content, "ok") if content else (None, "empty")
    depth = 0
    k = j
    limit = n if max_len is None else min(n, j + max_len + 2)
    while k < limit:
        ch = text[k]
        if ch == "\\":
            k += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = text[j + 1 : k].strip()
                return (content, "ok") if content else (None, "empty")
        k += 1
    if limit < n:
        return None, "too_long"
    return None, "unclosed"


def last_boxed_content(text: str, *, max_len: int | None = None) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Returns None when there is no box, when the last box is never closed, when it is empty, or when its
    content is longer than ``max_len`` characters.

    >>> last_boxed_content(r"so $x = \\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    """
    content, _ = _find_last_box(text, max_len)
    return content


def _max_nesting(s: str) -> int:
    """Deepest nesting of (), [] and {} in ``s`` (escaped braces count too: they still nest in SymPy)."""
    depth = best = 0
    for ch in s:
        if ch in _OPENERS:
            depth += 1
            if depth > best:
                best = depth
        elif ch in _CLOSERS and depth > 0:
            depth -= 1
    return best


def _extract(completion: str, max_chars: int, max_answer_chars: int, max_depth: int) -> tuple[str | None, str]:
    """Truncate, locate the last box and apply the size limits. Returns (content, status)."""
    if not isinstance(completion, str):
        raise TypeError(f"completions must be str, got {type(completion).__name__}")
    if len(completion) > max_chars:
        completion = completion[-max_chars:]  # the final answer is at the end
    content, status = _find_last_box(completion, max_answer_chars)
    if content is not None and _max_nesting(content) > max_depth:
        return None, "too_deep"
    return content, status


def _gold_tuple(answer) -> tuple[str, ...]:
    """Normalise a gold answer (a string, a number or a sequence of alternatives) to a tuple of str."""
    if isinstance(answer, str):
        items = [answer]
    elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
        items = [str(answer)]
    elif isinstance(answer, Sequence):
        items = [str(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a for a in answer]
    else:
        raise TypeError(f"a gold answer must be a string or a sequence of strings, got {type(answer).__name__}")
    golds: list[str] = []
    for g in items:
        if not isinstance(g, str):
            raise TypeError(f"gold alternatives must be strings, got {type(g).__name__}")
        g = g.strip()
        if g and g not in golds:
            golds.append(g)
    if not golds:
        raise ValueError(f"empty gold answer: {answer!r}")
    return tuple(golds)


def _gold_latex(gold: str) -> str:
    """The string handed to math_verify.parse for one gold answer."""
    s = gold.strip()
    if "\\boxed" in s or "\\fbox" in s:
        inner = last_boxed_content(s)
        if inner:
            s = inner
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and "$" not in s[1:-1]:
        s = s[1:-1].strip()
    return "\\boxed{" + s + "}"


# ----------------------------------------------------------------------------------------------------
# Verification of one item (runs in a worker, or in-process)
# ----------------------------------------------------------------------------------------------------

_QUIET = False


def _quiet_math_verify() -> None:
    """Keep math-verify / latex2sympy log records (some echo whole inputs) out of the console."""
    global _QUIET
    if _QUIET:
        return
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    _QUIET = True


class _SoftTimeout(Exception):
    pass


def _remaining(deadline: float | None) -> int | None:
    """Seconds to hand to a math-verify call: None (no alarm) or a whole number >= 1."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _SoftTimeout
    return max(1, _math.ceil(left))


_MV: tuple | None = None


def _math_verify():
    """(parse, verify, TimeoutException) from math-verify, imported on first use.

    Import errors propagate: a broken installation must fail loudly, not score everything 0.
    """
    global _MV
    if _MV is None:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException

        _MV = (parse, verify, TimeoutException)
    return _MV


def _mv_parse(latex: str, deadline: float | None) -> list:
    parse, _, TimeoutException = _math_verify()
    secs = _remaining(deadline)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # parsing_timeout=None disables math-verify's SIGALRM (needed off the main thread)
            return parse(latex, parsing_timeout=secs, raise_on_error=True)  # type: ignore[arg-type]
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


_GOLD_CACHE: collections.OrderedDict[str, list] = collections.OrderedDict()  # gold -> parsed, LRU
_GOLD_CACHE_SIZE = 4096
_GOLD_LOCK = threading.Lock()  # math_reward may run in several threads at once


def _parsed_gold(gold: str, deadline: float | None) -> list:
    with _GOLD_LOCK:
        hit = _GOLD_CACHE.get(gold)
        if hit is not None:
            _GOLD_CACHE.move_to_end(gold)
            return hit
    parsed = _mv_parse(_gold_latex(gold), deadline)
    with _GOLD_LOCK:
        _GOLD_CACHE[gold] = parsed
        if len(_GOLD_CACHE) > _GOLD_CACHE_SIZE:
            _GOLD_CACHE.popitem(last=False)
    return parsed


def _verify_content(content: str, golds: tuple[str, ...], timeout_s: float | None) -> tuple[float, bool]:
    """Reward for an extracted box content against the golds, and whether the soft budget ran out.

    ``timeout_s=None`` runs without a soft limit (no SIGALRM). Never raises for model input.
    """
    _quiet_math_verify()
    _math_verify()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        pred = _mv_parse("\\boxed{" + content + "}", deadline)
        if not pred:
            return 0.0, False
        for gold in golds:
            parsed = _parsed_gold(gold, deadline)
            for g in parsed:
                for p in pred:
                    if _mv_equal(g, p, deadline):
                        return 1.0, False
        return 0.0, False
    except _SoftTimeout:
        return 0.0, True
    except (RecursionError, MemoryError, OverflowError):
        return 0.0, False
    except Exception:
        return 0.0, False


def _signals_usable() -> bool:
    import signal

    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


def math_reward(
    completion: str,
    gold: str | Sequence[str],
    *,
    timeout_s: float = 5.0,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> float:
    """1.0 if the last ``\\boxed{}`` of ``completion`` is equivalent to ``gold`` (or any alternative), else 0.0.

    Runs in the calling process and is safe to call from any thread or process: math-verify's
    ``SIGALRM`` soft timeout (``timeout_s``) is used only on the main thread (it replaces, then
    restores, any SIGALRM handler of the caller and cancels a pending ``alarm``), and elsewhere the
    call runs without a time limit. There is no hard limit here; for untrusted model output at scale
    use :class:`MathVerifier`, which isolates each item in a killable worker. The first call sets the
    ``math_verify`` and ``latex2sympy2_extended`` loggers above CRITICAL, since some of their records
    echo whole inputs.
    """
    golds = _gold_tuple(gold)
    content, _ = _extract(completion, max_chars, max_answer_chars, max_depth)
    if content is None:
        return 0.0
    reward, _ = _verify_content(content, golds, timeout_s if _signals_usable() else None)
    return reward


# ----------------------------------------------------------------------------------------------------
# Worker process
# ----------------------------------------------------------------------------------------------------

# The worker is started as `python -P -c _BOOTSTRAP <this file> <args...>`: it loads this file by path
# under a private module name, so the popo package (and torch) is never imported in the worker.
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_popo_math_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod._worker_main(sys.argv[2:])\n"
)


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


def _worker_main(argv: list[str]) -> None:
    """Worker loop: receive chunks of (job, content, golds), send back one result message per item."""
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
        if _verify_content("\\frac{2}{4}", ("0.5",), max(timeout_s, 30.0))[0] != 1.0:
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
            reward, timed_out = _verify_content(content, golds, soft)
            res.send(("result", job, reward, timed_out))


# ----------------------------------------------------------------------------------------------------
# The pool
# ----------------------------------------------------------------------------------------------------


@dataclass
class VerifierStats:
    """Cumulative counters of a :class:`MathVerifier` (see ``MathVerifier.stats``).

    items: completions scored; verified: (box, gold) pairs actually checked by math-verify after
    de-duplication; correct: completions that earned 1.0. no_box / unclosed / empty / too_long /
    too_deep: completions that earned 0 before reaching math-verify, by reason. soft_timeouts: items
    whose math-verify budget (``timeout_s``) ran out; hard_timeouts: items whose worker overran the
    hard limit and was killed; crashes: items that made a worker die twice (an item whose worker dies
    is retried once, alone, on a fresh worker); restarts: workers started to replace a killed or dead
    one.
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
    crashes: int = 0
    restarts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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


class MathVerifier:
    """Batch math verifier: a pool of worker processes running :func:`math_reward`'s rule.

    Args:
        num_workers: worker processes; 0 scores in the calling process (tests, debugging; no hard limit,
            and the soft limit only on the main thread).
        timeout_s: soft per-item budget inside the worker (math-verify's own SIGALRM timeouts).
        hard_timeout_s: per-item wall-clock limit enforced by the parent, which kills and replaces a
            worker that overruns it; that item gets 0. Default ``1.5 * timeout_s + 2``.
        max_chars: only the last ``max_chars`` characters of a completion are searched for the box.
        max_answer_chars: a box whose content is longer than this earns 0 without being parsed.
        max_depth: a box nested deeper than this ((), [], {} combined) earns 0 without being parsed.
        chunk_size: items sent to a worker per message (results stream back one by one).
        max_memory_mb: address-space limit of each worker (RLIMIT_AS); 0 for none.
        start_timeout_s: how long to wait for a worker to start before raising RuntimeError.
        dedup: score identical (box content, gold) pairs of a batch once (see below).

    ``score`` de-duplicates identical (box content, gold) pairs within a batch (a group of G rollouts
    often repeats the same answer), scores each once, and copies the reward. Workers are started in the
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
        self.max_chars = int(max_chars)
        self.max_answer_chars = int(max_answer_chars)
        self.max_depth = int(max_depth)
        self.chunk_size = int(chunk_size)
        self.max_memory_mb = int(max_memory_mb)
        self.start_timeout_s = float(start_timeout_s)
        self.dedup = bool(dedup)
        self.stats = VerifierStats()
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown_workers, self._workers)
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
            self._run_pool([], wait_for_start=True)

    def _spawn(self) -> _Worker:
        from multiprocessing.connection import Connection

        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        debug = bool(os.environ.get("POPO_VERIFIER_DEBUG"))
        try:
            proc = subprocess.Popen(
                [
                    sys.executable, "-P", "-c", _BOOTSTRAP, os.path.abspath(__file__),
                    str(cmd_r), str(res_w), str(os.getpid()), repr(self.timeout_s), str(self.max_memory_mb),
                ],
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
        return _Worker(
            proc,
            Connection(cmd_w, readable=False),
            Connection(res_r, writable=False),
            time.monotonic() + self.start_timeout_s,
        )

    def _replace(self, index: int) -> None:
        _stop_worker(self._workers[index], 0.0)
        self._workers[index] = self._spawn()
        self.stats.restarts += 1

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
            golds = _gold_tuple(answer)
            content, status = _extract(completion, self.max_chars, self.max_answer_chars, self.max_depth)
            stats.items += 1
            if content is None:
                setattr(stats, status, getattr(stats, status) + 1)
                continue
            key = (content, golds) if self.dedup else (content, golds, i)
            jobs.setdefault(key, []).append(i)
        keys = list(jobs)
        stats.verified += len(keys)
        if self.num_workers == 0:
            soft = self.timeout_s if _signals_usable() else None
            results = {}
            for job, (content, golds, *_) in enumerate(keys):
                reward, timed_out = _verify_content(content, golds, soft)
                results[job] = reward
                stats.soft_timeouts += timed_out
        else:
            results = self._run_pool([(job, key[0], key[1]) for job, key in enumerate(keys)])
        for job, key in enumerate(keys):
            reward = results.get(job, 0.0)
            for i in jobs[key]:
                rewards[i] = reward
            if reward > 0:
                stats.correct += len(jobs[key])
        return rewards

    def _run_pool(
        self, items: list[tuple[int, str, tuple[str, ...]]], wait_for_start: bool = False
    ) -> dict[int, float]:
        """Score (job, content, golds) items on the workers; returns {job: reward}."""
        if not self._workers or (not items and not wait_for_start):
            return {}
        run = _PoolRun(self, items, wait_for_start)
        try:
            run.loop()
        except BaseException:
            # Leave no worker busy on this call's items (their late results would leak into the next
            # call): replace every worker that still holds a chunk, then re-raise.
            for idx, w in enumerate(self._workers):
                if w.chunk:
                    w.chunk = None
                    try:
                        self._replace(idx)
                    except Exception:
                        pass
            raise
        return run.results


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
