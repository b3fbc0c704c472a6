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

Answers with several parts: :func:`gold_forms` turns each alternative into the tuple of its parts, the
contents of its boxes when it has several (``\\boxed{1}\\boxed{2}`` is the set {1, 2}), else its
content split at top-level commas (``1, -2``; but ``1,000`` and ``(2, 3)`` stay whole), and
:func:`read_prediction` reads a completion's last box plus the parts of all its complete boxes. The rule
that uses them is :func:`popo.rewards.equivalence.verify_boxes`. Numbers written with spaces between
digit groups (``1 000``, ``1\\,000``) are joined and a full stop or comma ending a box is dropped
(:func:`normalise_answer`), on both sides.

Standard library only: the fuzz harness ``tests/fuzz_atheris_extract.py`` loads this file by path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_ANSWER_CHARS",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_DEPTH",
    "MAX_PARTS",
    "all_boxed_contents",
    "extract_answer",
    "gold_answers",
    "gold_content",
    "gold_forms",
    "usable_gold_forms",
    "last_boxed_content",
    "normalise_answer",
    "read_prediction",
    "split_parts",
]

DEFAULT_MAX_CHARS = 32_768  # only this many trailing characters of a completion are searched
DEFAULT_MAX_ANSWER_CHARS = 1_000  # a longer box content is no answer
DEFAULT_MAX_DEPTH = 40  # a box content nested deeper than this ((), [], {} combined) is no answer
MAX_PARTS = 8  # an answer with more parts than this is compared as a whole only

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


# ----------------------------------------------------------------------------------------------------
# Answers with several parts
# ----------------------------------------------------------------------------------------------------

_SPACE_SEPARATORS = r"(?:\s|\\[,;: !]|~)+"  # " ", "\,", "\;", "\:", "\ ", "\!", "~" between digit groups
_SPACED_NUMBER = re.compile(r"[-+]?\d{1,3}(?:" + _SPACE_SEPARATORS + r"\d{3})+(?:\.\d+)?")
_COMMA_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,(?:\\!)?\d{3})+(?:\.\d+)?")  # 1,000 / 12,000,023 / 10,\!000


def normalise_answer(content: str) -> str:
    """A box content without sentence punctuation at its end (``42.``, ``(1,2),``; an ellipsis stays) and
    with ``1 000`` (spaces, thin spaces or ``~`` between groups of three digits) written ``1000``."""
    content = content.strip()
    if content[-1:] in (".", ",") and not content.endswith(("..", "\\.", "\\,")):
        content = content[:-1].rstrip() or content
    if _SPACED_NUMBER.fullmatch(content):
        return re.sub(_SPACE_SEPARATORS, "", content)
    return content


def split_parts(content: str) -> tuple[str, ...]:
    """``content`` split at commas outside (), [], {} and ``\\{ \\}`` (other escapes such as ``\\,`` skipped),
    stripped, empty parts dropped. A number with thousands commas (``12,000,023``) is one part."""
    if _COMMA_NUMBER.fullmatch(content.strip()):
        return (content.strip(),)
    parts, depth, start, i = [], 0, 0, 0
    while i < len(content):
        ch = content[i]
        if ch == "\\":  # an escaped character: only \\{ and \\} (set braces) nest
            depth += {"{": 1, "}": -1 if depth else 0}.get(content[i + 1: i + 2], 0)
            i += 2
            continue
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS and depth > 0:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(content[start:i])
            start = i + 1
        i += 1
    parts.append(content[start:])
    return tuple(p.strip() for p in parts if p.strip())


def all_boxed_contents(text: str, max_len: int | None = None) -> list[str] | None:
    """The contents of every box in ``text``, left to right; None when one of them is unclosed, empty,
    longer than ``max_len`` or holds another box."""
    out, end = [], len(text)
    while True:  # right to left: each box must close before the next one starts
        start, _ = _last_box_start(text, end)
        if start < 0:
            return out[::-1]
        content, _ = _find_last_box(text[:end], max_len)
        if content is None:
            return None
        out.append(content)
        end = start


def _distinct_parts(contents: Sequence[str]) -> tuple[str, ...]:
    parts: list[str] = []
    for content in contents:
        for part in split_parts(content):
            part = normalise_answer(part)
            if part not in parts:
                parts.append(part)
    return tuple(parts)


def read_prediction(completion: str, max_chars: int, max_answer_chars: int, max_depth: int,
                    *, with_parts: bool = True) -> tuple[str | None, tuple[str, ...], str]:
    """(last box content, parts of all boxes, status) of a completion under the size limits.

    The last box content and status are :func:`extract_answer`'s (the content through
    :func:`normalise_answer`). With ``with_parts``, the parts are the distinct top-level comma parts of
    every complete box (more than ``MAX_PARTS``, or a box over the limits: none); they can only ever match
    a gold with several parts (:func:`popo.rewards.equivalence.verify_boxes`).
    """
    content, status = extract_answer(completion, max_chars, max_answer_chars, max_depth)
    if content is None:
        return None, (), status
    parts: tuple[str, ...] = ()
    if with_parts:
        tail = completion[-max_chars:] if len(completion) > max_chars else completion
        boxes = all_boxed_contents(tail, max_answer_chars)
        if boxes is not None and all(_max_nesting(b) <= max_depth for b in boxes):
            parts = _distinct_parts(boxes)
            parts = parts if len(parts) <= MAX_PARTS else ()
    return normalise_answer(content), parts, status


def gold_forms(answer) -> tuple[tuple[str, ...], ...]:
    """Each accepted alternative of a gold answer as the tuple of its parts (one part: single-valued).

    An alternative with several boxes is the set of their contents; one box (or none) is split at
    top-level commas. More than ``MAX_PARTS`` parts: the alternative is kept whole. Raises like
    :func:`gold_answers`.
    """
    forms = []
    for gold in gold_answers(answer):
        boxes = all_boxed_contents(gold) if ("\\boxed" in gold or "\\fbox" in gold) else None
        parts = _distinct_parts(boxes) if boxes and len(boxes) > 1 else _distinct_parts([gold_content(gold)])
        if not parts or len(parts) > MAX_PARTS:
            parts = (normalise_answer(gold_content(gold)),)
        forms.append(parts)
    return tuple(forms)



def usable_gold_forms(answer) -> tuple[tuple[str, ...], ...]:
    """:func:`gold_forms` for scoring: a gold that cannot be read (None, a dict, an empty string, a list
    holding something other than strings and numbers, ...) gives no forms, so every completion scores 0
    against it instead of raising. Loaders check golds themselves and name the bad row."""
    try:
        return gold_forms(answer)
    except (TypeError, ValueError, RecursionError):
        return ()
