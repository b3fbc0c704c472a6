"""The verifier interface the trainers call to turn completions into rewards.

A verifier scores a batch of completions against their gold answers and returns one reward in [0, 1]
per completion, in order. A gold answer is either one string or a sequence of accepted alternatives
(any match counts). Verifiers may hold resources (worker processes), so they have a ``close()`` and the
concrete classes are context managers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

Answer = str | Sequence[str]


@runtime_checkable
class Verifier(Protocol):
    """Scores completions against gold answers; rewards are floats in [0, 1]."""

    def score(self, completions: Sequence[str], answers: Sequence[Answer]) -> list[float]: ...

    def close(self) -> None: ...


class FunctionVerifier:
    """Adapts a per-item function ``fn(completion, answer) -> float`` to the :class:`Verifier` interface.

    Items are scored in the calling process, one after another. Rewards are clamped to [0, 1]. This is
    meant for cheap, trusted reward functions (the synthetic testbed task, unit tests); use
    :class:`popo.rewards.MathVerifier` for model-written maths.
    """

    def __init__(self, fn: Callable[[str, Answer], float]):
        self.fn = fn

    def score(self, completions: Sequence[str], answers: Sequence[Answer]) -> list[float]:
        if len(completions) != len(answers):
            raise ValueError(
                f"got {len(completions)} completions but {len(answers)} answers; they must pair up"
            )
        return [min(1.0, max(0.0, float(self.fn(c, a)))) for c, a in zip(completions, answers)]

    def close(self) -> None:
        pass

    def __enter__(self) -> FunctionVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
