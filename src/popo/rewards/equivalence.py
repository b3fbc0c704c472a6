"""Whether a box content is equivalent to a gold answer, decided by ``math-verify``, and the handler of the
verifier worker processes that decide it for :class:`popo.rewards.MathVerifier`.

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

A verifier worker (:mod:`popo.rewards.sandbox`) loads this file by path under a private module name and
calls :func:`worker_setup`, so it never imports ``popo`` (nor torch) or the parent's ``__main__``. Hence
the standard library only at the top, and ``math_verify`` on first use.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
import warnings

__all__ = ["clear_gold_cache", "soft_timeout_usable", "verify_answer", "verify_boxes", "worker_setup"]

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


def verify_boxes(last: str, parts: tuple[str, ...], golds: tuple[tuple[str, ...], ...],
                 timeout_s: float | None) -> tuple[float, bool]:
    """(reward, whether the soft budget ran out) for a completion against gold alternatives.

    ``last`` is what the completion's last box holds and ``parts`` the distinct parts of all its boxes
    (:func:`popo.rewards.answers.read_prediction`); each gold alternative is the tuple of its parts
    (:func:`popo.rewards.answers.gold_forms`). The reward is 1.0 when, for some alternative:

    * the last box is equivalent to it (an alternative with several parts written as one comma list, which
      math-verify compares as a set: ``\\boxed{1, 2}`` for the gold ``\\boxed{1}\\boxed{2}``), or
    * it has several parts and the completion's parts are exactly as many and pair up one to one with
      equivalent gold parts (``\\boxed{(2, 2)}`` and ``\\boxed{(6, 2)}`` for the gold ``(2, 2), (6, 2)``).

    So the last box still decides a single-valued answer, and listing extra candidates never pays (boxes
    1, 2 and 3 for the gold {2, 3} are three parts, and the last box, 3, is not {2, 3}). ``timeout_s=None``
    runs without a soft limit (no SIGALRM; required off the main thread). Never raises for model input;
    raises ImportError when math-verify cannot be imported.
    """
    _quiet_math_verify()
    _math_verify()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        pred = _mv_parse(last, deadline)
        for gold in golds:
            if pred and _equivalent(gold[0] if len(gold) == 1 else ", ".join(gold), pred, deadline):
                return 1.0, False
            if 1 < len(gold) == len(parts) and _pair_up(parts, gold, deadline):
                return 1.0, False
        return 0.0, False
    except _SoftTimeout:
        return 0.0, True
    except Exception:  # RecursionError, MemoryError, OverflowError, ...: model input never raises
        return 0.0, False


def _equivalent(gold: str, pred: list, deadline: float | None) -> bool:
    return any(_mv_equal(g, p, deadline) for g in _parsed_gold(gold, deadline) for p in pred)


def _pair_up(parts: tuple[str, ...], gold: tuple[str, ...], deadline: float | None) -> bool:
    """Whether the parts and the gold parts (as many) match one to one (augmenting paths; a few parts)."""
    parsed = [_mv_parse(p, deadline) for p in parts]
    if not all(parsed):
        return False
    ok = [[_equivalent(g, pred, deadline) for pred in parsed] for g in gold]  # [gold part][prediction part]
    owner = [-1] * len(parts)  # prediction part -> the gold part it is matched to

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(len(parts)):
            if ok[i][j] and j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, set()) for i in range(len(gold)))


def verify_answer(content: str, golds: tuple[str, ...], timeout_s: float | None) -> tuple[float, bool]:
    """:func:`verify_boxes` for one box content against single-valued gold contents (each already passed
    through :func:`popo.rewards.answers.gold_content`): 1.0 when math-verify finds them equivalent."""
    return verify_boxes(content, (), tuple((g,) for g in golds), timeout_s)


def soft_timeout_usable() -> bool:
    """Whether :func:`verify_answer` may be given a soft ``timeout_s`` here: the platform has SIGALRM
    and this is the main thread."""
    import signal

    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------------
# The worker's handler (the process itself is popo.rewards.sandbox)
# ----------------------------------------------------------------------------------------------------


def worker_setup(args: list[str]):
    """Set up a verifier worker (called by :func:`popo.rewards.sandbox.main`) and return its handler.

    ``args`` is ``[timeout_s]``, the soft budget per item. Imports math-verify and checks that it accepts
    2/4 = 0.5 (a worker that cannot is broken: the error reaches the parent at start-up). The handler
    scores one ``(job, last box, parts, gold forms)`` item (:func:`verify_boxes`) as ``(reward, timed_out)``.
    """
    timeout_s = float(args[0])
    warnings.simplefilter("ignore")
    _quiet_math_verify()
    if verify_answer("\\frac{2}{4}", ("0.5",), max(timeout_s, 30.0))[0] != 1.0:
        raise RuntimeError("self-check failed: math-verify does not accept \\frac{2}{4} = 0.5")
    soft = timeout_s if timeout_s > 0 else None
    # test hook: a worker dies abruptly on a box with exactly this content (simulates a crash in C code)
    crash_on = os.environ.get("POPO_VERIFIER_TEST_CRASH_ON")

    def handle(item: tuple) -> tuple[float, bool]:
        _, last, parts, golds = item
        if crash_on is not None and last == crash_on:
            os._exit(70)
        return verify_boxes(last, parts, golds, soft)

    return handle
