"""One prompt with its gold answer(s)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """A problem and its gold answer; `answer` is a tuple when several forms are accepted."""

    problem: str
    answer: str | tuple[str, ...]
    id: str = ""

    @property
    def answers(self) -> tuple[str, ...]:
        """The accepted answers as a tuple (one element when `answer` is a plain string)."""
        return (self.answer,) if isinstance(self.answer, str) else tuple(self.answer)
