"""One prompt with its gold answer(s), and what reward functions may read beside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """A problem and its gold answer; `answer` is a tuple when several forms are accepted.

    `messages` is the prompt as chat messages (`{role, content}` dicts) when the dataset gave one; it is
    rendered with the tokenizer's chat template and `problem` is then its last user turn. `columns` holds
    the row's other fields, handed to user reward functions. Neither takes part in comparisons.
    """

    problem: str
    answer: str | tuple[str, ...]
    id: str = ""
    messages: tuple[Mapping[str, str], ...] | None = field(default=None, compare=False)
    columns: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def answers(self) -> tuple[str, ...]:
        """The accepted answers as a tuple (one element when `answer` is a plain string)."""
        return (self.answer,) if isinstance(self.answer, str) else tuple(self.answer)


def column_names(examples: Sequence[Example], *, sample: int = 1000) -> list[str]:
    """The dataset columns user reward functions receive (those of the first `sample` examples), and `answer`."""
    return sorted({"answer", *(k for ex in examples[:sample] for k in (ex.columns or {}))})
