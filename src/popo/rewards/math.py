"""The math answer reward, on top of ``math-verify``, scored in the calling process.

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

Answers with several parts: a gold with several boxes is the set of their contents, and a gold written
as a comma list (``1, -2``) is the set of its items. Against such a gold a completion also earns 1.0 when
its boxes together hold exactly that set (``\\boxed{-2}`` ... ``\\boxed{1}``); anything else falls back to
the last box, so listing extra candidates never pays (boxing 1, 2 and 3 for the gold {2, 3} earns 0).
Numbers with spaces between digit groups (``1 000``) count as the number (1000).

A gold may be a list of accepted alternatives (any match counts). Reading the box and normalising the
golds is :mod:`popo.rewards.answers`; the equivalence check is :mod:`popo.rewards.equivalence`.

Safety
------
Model text is only ever treated as data: it is parsed by ``math-verify``/``latex2sympy`` and never
passed to ``eval``/``exec``. Parsing and comparing can still blow up inside C code that no signal can
interrupt, so for untrusted model output at scale use :class:`popo.rewards.MathVerifier`
(:mod:`popo.rewards.math_verifier`), which runs the same rule in worker processes under a hard wall-clock limit
per item. :func:`math_reward` has only the soft limit, and only on the main thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from popo.rewards.answers import (
    DEFAULT_MAX_ANSWER_CHARS, DEFAULT_MAX_CHARS, DEFAULT_MAX_DEPTH, read_prediction, usable_gold_forms,
)
from popo.rewards.equivalence import soft_timeout_usable, verify_boxes

__all__ = ["math_reward"]


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
    use :class:`popo.rewards.MathVerifier`, which isolates each item in a killable worker. Each call
    sets the ``math_verify`` and ``latex2sympy2_extended`` loggers above CRITICAL, since some of their
    records echo whole inputs.

    Never raises on its inputs: a completion that is not a str, or a gold that is not a non-empty string,
    number or sequence of them (None, ``{}``, ``[None]``, ``""``), earns 0.0.
    """
    forms = usable_gold_forms(gold)
    if not forms or not isinstance(completion, str):
        return 0.0  # a gold that cannot be read, or a completion that is not text: no reward, never an error
    content, parts, _ = read_prediction(completion, max_chars, max_answer_chars, max_depth,
                                        with_parts=any(len(f) > 1 for f in forms))
    if content is None:
        return 0.0
    soft = timeout_s if soft_timeout_usable() else None
    reward, _ = verify_boxes(content, parts, forms, soft)
    return reward
