"""Reading the answer out of a completion, and putting gold answers in the same form.

A completion's answer is the content of its **last** ``\\boxed{...}`` (or ``\\fbox{...}``). The box is
found by a brace-matching scan (escaped ``\\{`` / ``\\}`` are literal characters and do not count), so
nested braces such as ``\\boxed{\\frac{1}{2}}`` work. The brace-less form ``\\boxed 5`` (used by a few
MATH reference solutions) is read up to the next whitespace or ``$``. There is no answer when the last
box is unfinished (``\\boxed{5`` with no closing brace, or a bare ``\\boxed`` at the very end, even if an
earlier box was complete), empty, longer than ``max_answer_chars`` or nested deeper than ``max_depth``.

A gold answer may be a string, a number or a sequence of accepted alternatives (:func:`gold_answers`);
:func:`gold_content` reduces each alternative to a box content, so that both sides reach math-verify in
the same ``\\boxed{...}`` form (see :mod:`popo.rewards.equivalence`).

Standard library only: the fuzz harness ``tests/fuzz_atheris_extract.py`` loads this file by path.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_ANSWER_CHARS",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_DEPTH",
    "extract_answer",
    "gold_answers",
    "gold_content",
    "last_boxed_content",
]

DEFAULT_MAX_CHARS = 32_768  # only this many trailing characters of a completion are searched
DEFAULT_MAX_ANSWER_CHARS = 1_000  # a longer box content is no answer
DEFAULT_MAX_DEPTH = 40  # a box content nested deeper than this ((), [], {} combined) is no answer

_BOX_MACROS = ("\\boxed", "\\fbox")
_OPENERS = {"{": "}", "(": ")", "[": "]"}
_CLOSERS = {"}", ")", "]"}


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


def extract_answer(
    completion: str, max_chars: int, max_answer_chars: int, max_depth: int
) -> tuple[str | None, str]:
    """The answer of a completion under the size limits, as (box content, status).

    Only the last ``max_chars`` characters are searched (the final answer is at the end). status is
    ``"ok"`` when there is an answer, else why not: ``"no_box"``, ``"unclosed"``, ``"empty"``,
    ``"too_long"`` (over ``max_answer_chars``) or ``"too_deep"`` (nested deeper than ``max_depth``).
    Raises TypeError when ``completion`` is not a str.
    """
    if not isinstance(completion, str):
        raise TypeError(f"completions must be str, got {type(completion).__name__}")
    if len(completion) > max_chars:
        completion = completion[-max_chars:]
    content, status = _find_last_box(completion, max_answer_chars)
    if content is not None and _max_nesting(content) > max_depth:
        return None, "too_deep"
    return content, status


def gold_answers(answer) -> tuple[str, ...]:
    """A gold answer (a string, a number or a sequence of alternatives) as a tuple of distinct strings.

    Alternatives are stripped; empty ones are dropped. Raises TypeError for other types and ValueError
    when no alternative is left. Pass each alternative through :func:`gold_content` before comparing.
    """
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


def gold_content(gold: str) -> str:
    """One gold alternative as a box content: the content of its own last box when it has one, and
    without surrounding ``$...$``, so that it compares like the content of a completion's box."""
    s = gold.strip()
    if "\\boxed" in s or "\\fbox" in s:
        inner = last_boxed_content(s)
        if inner:
            s = inner
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and "$" not in s[1:-1]:
        s = s[1:-1].strip()
    return s
