"""Countdown: reach a target from a few given numbers with + - * /, each number used exactly once.

The rules, the solver and the verifier (the splits are in `popo.testbed.countdown_task`). A problem is a
multiset of numbers and a target; its prompt and its gold spec read ``7,3,5>22:`` and ``7,3,5>22``. A
completion is a chain of steps, each combining two available values (given numbers or earlier results)
into a new one, separated by ``,``, then ``;`` and the final value (the final line):

    7,3,5>22:  ->  7*3=21,21+1=...        (not a solution: 1 is not given)
    7,3,5>22:  ->  7*5=35,35-3=32;32      (valid chain, wrong final value: reward 0)
    5,4,2>22:  ->  5*4=20,20+2=22;22      (a solution: reward 1)

A step consumes its two operands: each given number is used exactly once, and each intermediate result
is used at most once by a later step; when the chain ends exactly one value is left, the last step's
result, which must equal the final line and the target. Every value is a non-negative integer no larger
than `Rules.max_value`: subtraction must not go below 0 and division must be exact (no division by 0).

The solver enumerates every solution of a problem as a canonical string: the larger operand first for
``+`` and ``*`` (the verifier accepts either order), steps in every order that respects their data flow.
The verifier parses with a bounded regular expression over ASCII characters only (never `eval`), after a
length check, so hostile text costs reward 0, never an exception or a hang.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from popo.testbed.addition import TaskVerifier, gold_strings

OPS = "+-*/"
_STEP = re.compile(r"([0-9]{1,4})([-+*/])([0-9]{1,4})=([0-9]{1,4})")
_SPEC = re.compile(r"([0-9]{1,4}(?:,[0-9]{1,4}){1,5})>([0-9]{1,4})")
_ASCII = frozenset("0123456789+-*/=,;")


@dataclass(frozen=True)
class Rules:
    """Bounds every completion and value must respect (a completion outside them earns 0)."""

    max_value: int = 999
    """Largest value a given number, an intermediate result or a target may take."""
    max_chars: int = 96
    """Longest completion read at all (longer text is rejected before parsing)."""
    max_numbers: int = 6
    """Most given numbers a problem may have (so a chain has at most max_numbers - 1 steps)."""


DEFAULT_RULES = Rules()


def apply(a: int, op: str, b: int, rules: Rules = DEFAULT_RULES) -> int | None:
    """The value of ``a op b`` when it obeys the rules (non-negative, exact, within bounds), else None."""
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        if b == 0 or a % b:
            return None
        value = a // b
    else:
        return None
    return value if 0 <= value <= rules.max_value else None


def format_spec(numbers: Sequence[int], target: int) -> str:
    """The gold spec of a problem (its prompt without the trailing ``:``)."""
    return ",".join(str(n) for n in numbers) + f">{target}"


def parse_spec(spec: str, rules: Rules = DEFAULT_RULES) -> tuple[list[int], int] | None:
    """(numbers, target) from a spec ``7,3,5>22``, or None when it is malformed or out of bounds."""
    if not isinstance(spec, str) or len(spec) > 64:
        return None
    match = _SPEC.fullmatch(spec.strip().removesuffix(":"))
    if match is None:
        return None
    numbers = [int(x) for x in match.group(1).split(",")]
    target = int(match.group(2))
    if len(numbers) > rules.max_numbers or max(numbers + [target]) > rules.max_value:
        return None
    return numbers, target


def _steps(available: Sequence[int], rules: Rules) -> Iterator[tuple[int, int, str, int]]:
    """Every legal next step from `available`: (index of a, index of b, op, value), canonical form."""
    n = len(available)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = available[i], available[j]
            for op in OPS:
                if op in "+*" and a < b:  # canonical: the larger operand first
                    continue
                value = apply(a, op, b, rules)
                if value is not None:
                    yield i, j, op, value


def final_values(numbers: Sequence[int], rules: Rules = DEFAULT_RULES,
                 memo: dict[tuple[int, ...], set[int]] | None = None) -> set[int]:
    """Every value a complete chain over `numbers` can end on (the solvable targets), without spelling
    the chains out. Pass the same `memo` dict (and rules) to several calls to share their sub-results."""
    memo = {} if memo is None else memo

    def ends(available: tuple[int, ...]) -> set[int]:
        if len(available) == 1:
            return set(available)
        if available not in memo:
            out: set[int] = set()
            for i, j, _, value in _steps(available, rules):
                rest = [v for k, v in enumerate(available) if k not in (i, j)] + [value]
                out |= ends(tuple(sorted(rest)))
            memo[available] = out
        return memo[available]

    return ends(tuple(sorted(numbers)))


def solutions(numbers: Sequence[int], target: int, rules: Rules = DEFAULT_RULES) -> list[str]:
    """Every distinct canonical solution of the problem, sorted."""
    found: set[str] = set()
    _search(list(numbers), [], target, rules, found)
    return sorted(found)


def reachable(numbers: Sequence[int], rules: Rules = DEFAULT_RULES) -> dict[int, list[str]]:
    """Every target reachable from `numbers`, with its sorted canonical solutions."""
    found: dict[int, set[str]] = {}
    _search(list(numbers), [], None, rules, found)
    return {t: sorted(s) for t, s in sorted(found.items())}


def _search(available: list[int], chain: list[str], target: int | None, rules: Rules, found) -> None:
    if len(available) == 1:
        if chain and (target is None or available[0] == target):
            text = ",".join(chain) + f";{available[0]}"
            if target is None:
                found.setdefault(available[0], set()).add(text)
            else:
                found.add(text)
        return
    for i, j, op, value in _steps(available, rules):
        rest = [v for k, v in enumerate(available) if k not in (i, j)] + [value]
        _search(rest, chain + [f"{available[i]}{op}{available[j]}={value}"], target, rules, found)


def check(completion: str, numbers: Sequence[int], target: int, rules: Rules = DEFAULT_RULES) -> bool:
    """Whether `completion` is a valid solution of (numbers, target) under `rules` (see the module
    docstring). Never raises on text; bounded work (at most `max_chars` characters are parsed)."""
    if not isinstance(completion, str) or len(completion) > rules.max_chars:
        return False
    text = completion.strip()
    if not text or not set(text) <= _ASCII:  # unicode digits, letters, spaces inside: rejected
        return False
    body, sep, final = text.partition(";")
    if not sep or not final.isascii() or not final.isdigit() or len(final) > 4:
        return False
    pool = list(numbers)  # values still available: given numbers, then unused results
    last = None
    parts = body.split(",")
    if len(parts) > rules.max_numbers - 1:
        return False
    for part in parts:
        match = _STEP.fullmatch(part)
        if match is None:
            return False
        a, op, b, written = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        if apply(a, op, b, rules) != written:
            return False
        for operand in (a, b):
            if operand not in pool:  # not given, or already used
                return False
            pool.remove(operand)
        pool.append(written)
        last = written
    return len(pool) == 1 and last == int(final) == target


def countdown_reward(completion: str, answer: str | Sequence[str]) -> float:
    """1.0 when `completion` solves the problem of the gold spec `answer` (or any of several), else 0.0; a
    gold that is not a spec string or a list of them (None, a number, a dict) accepts nothing."""
    for spec in gold_strings(answer):
        parsed = parse_spec(spec)
        if parsed is not None and check(completion, *parsed):
            return 1.0
    return 0.0


class CountdownVerifier(TaskVerifier):
    """The countdown testbed's verifier (parsing is bounded, so it runs in-process)."""

    reward = staticmethod(countdown_reward)
