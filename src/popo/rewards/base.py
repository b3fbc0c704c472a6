"""The verifier interface the trainers call to turn completions into rewards.

A verifier scores a batch of completions against their gold answers and returns one reward per completion,
in order (in [0, 1] for the built-in checkers; a weighted sum of parts may exceed 1). A gold answer is
either one string or a sequence of accepted alternatives (any match counts). The interface has four
methods; :class:`VerifierBase` gives every one but ``score`` a default, so a new verifier writes ``score``
and inherits the rest:

* ``score(completions, answers)``: the rewards; the one method each verifier must write.
* ``score_rows(prompts, completions, examples)``: the rewards of completions of rendered ``prompts`` for
  dataset ``examples`` (each with an ``answer``), one per completion. The trainer and the evaluation call
  this one; the default scores the examples' answers with ``score``. A reward that reads more than the
  answer (user functions reading dataset columns: :class:`popo.rewards.composite.CompositeReward`)
  overrides it.
* ``take_metrics()``: counts kept since the last call (numbers that add up over ranks), then forgotten;
  the default keeps none and returns ``{}``.
* ``close()``: free held resources (worker processes); the default holds none. Verifiers are context
  managers that close on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

Answer = str | Sequence[str]


@runtime_checkable
class Verifier(Protocol):
    """Scores completions against gold answers (see the module docstring for each method)."""

    def score(self, completions: Sequence[str], answers: Sequence[Answer]) -> list[float]: ...

    def score_rows(self, prompts: Sequence[str], completions: Sequence[str],
                   examples: Sequence[Any]) -> list[float]: ...

    def take_metrics(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class VerifierBase:
    """The defaults of the :class:`Verifier` methods other than ``score``, and the context-manager methods."""

    def score(self, completions: Sequence[str], answers: Sequence[Answer]) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} must define score(completions, answers)")

    def score_rows(self, prompts: Sequence[str], completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        """The examples' answers scored by ``score``; the prompts and the rest of each example are not read."""
        return self.score(list(completions), [ex.answer for ex in examples])

    def take_metrics(self) -> dict[str, float]:
        """No counts are kept."""
        return {}

    def close(self) -> None:
        """Nothing is held."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FunctionVerifier(VerifierBase):
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
