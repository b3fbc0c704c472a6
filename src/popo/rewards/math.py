"""Math answer rewards on top of ``math-verify``, and the worker that scores them in a separate process.

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
(in :mod:`popo.rewards.pool`, also importable from here) runs the work in separate worker processes and
the parent enforces a hard wall-clock limit per item: a worker that overruns it is killed and replaced,
and only the item it was stuck on gets 0.

Each item also has a soft budget (``timeout_s``) enforced inside the worker through math-verify's own
``SIGALRM`` timeouts. ``SIGALRM`` only works in the main thread, so :func:`math_reward` and the
in-process mode (``num_workers=0``) use it only when called from the main thread and otherwise run
without a soft limit.

The worker processes (:mod:`popo.rewards.worker_main`) load *this file* by path, so they import neither
``popo`` (and its torch-heavy trainers) nor the parent's ``__main__``; the module therefore imports only
the standard library at the top, ``math_verify`` lazily, and the pool only on request.
"""

from __future__ import annotations

import functools
import logging
import math as _math
import threading
import time
import warnings
from collections.abc import Sequence

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
    return max(1, _math.ceil(left))


@functools.cache
def _math_verify():
    """(parse, verify, TimeoutException) from math-verify, imported on first use.

    Import errors propagate (and are not cached): a broken installation must fail loudly, not score
    everything 0.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    return parse, verify, TimeoutException


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
    return _mv_parse(_gold_latex(key.gold), key.deadline)


def _parsed_gold(gold: str, deadline: float | None) -> list:
    """math_verify.parse of a gold answer, cached by gold (the same golds recur across a run)."""
    return _parse_gold_once(_GoldKey(gold, deadline))


def clear_gold_cache() -> None:
    """Forget the parsed golds of this process (benchmarks use it to time cold runs)."""
    _parse_gold_once.cache_clear()


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
    except Exception:  # RecursionError, MemoryError, OverflowError, ...: model input never raises
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
    use :class:`MathVerifier`, which isolates each item in a killable worker. Each call sets the
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
# The pool lives in popo.rewards.pool (it imports this module, so it is loaded lazily here)
# ----------------------------------------------------------------------------------------------------


def __getattr__(name: str):
    """``MathVerifier`` and ``VerifierStats`` from :mod:`popo.rewards.pool`, on first access."""
    if name in ("MathVerifier", "VerifierStats"):
        from popo.rewards import pool

        return getattr(pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
