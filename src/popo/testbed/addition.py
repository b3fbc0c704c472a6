"""The synthetic reasoning task: multi-digit addition with a column-sum scratchpad.

A prompt is ``a+b=``; the target completion lists the column sums from the least significant digit up,
each including the carry from the column before, then ``=`` and the exact sum, then end-of-sequence:

    345+678=  ->  13,12,10=1023<eos>        (5+8=13, 4+7+1=12, 3+6+1=10)

The verifier is strict: reward 1.0 only if the whole completion matches ``<sums>=<answer>`` and the
answer is the exact sum (the trainer also zeroes rollouts cut off before end-of-sequence). A wrong
digit anywhere in the answer earns 0: no partial credit, the setting POPO is designed for.

Difficulty is the number of digits of each operand. The warm-up trains on easier problems (operands
of ``1 .. digits`` digits, short ones more often) and RL and evaluation use full ``digits``-digit
operands, so RL has to improve on what imitation taught rather than repeat it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from popo.data.example import Example
from popo.errors import ConfigError
from popo.rewards.base import VerifierBase
from popo.testbed.tokenizer import CHARACTERS

_COMPLETION = re.compile(r"(\d{1,2},)*\d{1,2}=(\d+)")


def scratchpad(a: int, b: int) -> str:
    """The target completion (without end-of-sequence) for ``a+b=``."""
    da, db = str(a)[::-1], str(b)[::-1]
    sums, carry = [], 0
    for k in range(max(len(da), len(db))):
        column = int(da[k]) if k < len(da) else 0
        column += int(db[k]) if k < len(db) else 0
        column += carry
        sums.append(str(column))
        carry = column // 10
    return ",".join(sums) + f"={a + b}"


def make_example(a: int, b: int, split: str, index: int) -> Example:
    return Example(problem=f"{a}+{b}=", answer=str(a + b), id=f"{split}-{index}")


def _operand(rng: random.Random, digits: int) -> int:
    low = 10 ** (digits - 1) if digits > 1 else 0
    return rng.randint(low, 10**digits - 1)


def _operand_count(digits: int) -> int:
    return 10 if digits == 1 else 9 * 10 ** (digits - 1)


@dataclass(frozen=True)
class AdditionTask:
    """Generator of addition problems. Splits are disjoint by construction: the held-out test problems
    are drawn first from their own seed, then the validation problems from theirs (excluding the test
    ones), and both are excluded from the RL prompts and the warm-up. The test split does not depend on
    `validation_size`."""

    digits: int = 3
    seed: int = 0
    test_size: int = 1000
    validation_size: int = 0
    name: str = "addition"
    alphabet: str = CHARACTERS

    def __post_init__(self):
        universe = _operand_count(self.digits) ** 2
        if self.test_size + self.validation_size > universe // 2:
            raise ConfigError(f"testbed.test_size + testbed.validation_size = {self.test_size + self.validation_size}"
                              f" leaves too few of the {universe} {self.digits}-digit addition problems for training "
                              "(at most half may be held out)")

    def describe(self) -> str:
        return f"{self.digits}-digit addition with a column-sum scratchpad; warm-up on easier problems"

    def cache_fields(self) -> dict:
        """What the warmed-up model depends on, beside the warm-up settings (part of the cache key)."""
        return {"task": self.name, "digits": self.digits, "seed": self.seed, "test_size": self.test_size,
                "validation_size": self.validation_size}  # the warm-up excludes the held-out problems

    def verifier(self) -> "AdditionVerifier":
        return AdditionVerifier()

    def _draw(self, label: str, size: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
        rng = random.Random(f"{label}-{self.seed}-{self.digits}")
        seen, out = set(exclude), []
        while len(out) < size:
            pair = (_operand(rng, self.digits), _operand(rng, self.digits))
            if pair not in seen:
                seen.add(pair)
                out.append(pair)
        return out

    def _test_pairs_list(self) -> list[tuple[int, int]]:
        return self._draw("test", self.test_size, set())

    def test_examples(self) -> list[Example]:
        """The held-out test split: read only for final tables."""
        return [make_example(*pair, "test", i) for i, pair in enumerate(self._test_pairs_list())]

    def validation_examples(self) -> list[Example]:
        """The validation split: training-time evaluation and every choice (learning rates, sweeps)."""
        pairs = self._draw("validation", self.validation_size, set(self._test_pairs_list()))
        return [make_example(*pair, "validation", i) for i, pair in enumerate(pairs)]

    def _test_pairs(self) -> set[tuple[int, int]]:
        """Every held-out pair (test and validation): never an RL prompt or a warm-up example."""
        test = self._test_pairs_list()
        return set(test) | set(self._draw("validation", self.validation_size, set(test)))

    def train_examples(self, count: int, *, seed: int) -> list[Example]:
        """RL prompts: full ``digits``-digit operands, never a held-out problem."""
        rng, held_out = random.Random(f"train-{seed}"), self._test_pairs()
        out: list[Example] = []
        while len(out) < count:
            pair = (_operand(rng, self.digits), _operand(rng, self.digits))
            if pair not in held_out:
                out.append(make_example(*pair, "train", len(out)))
        return out

    def warmup_pairs(self, count: int, *, seed: int) -> list[tuple[str, str]]:
        """(prompt, completion) pairs for the supervised warm-up, on the easier distribution."""
        rng, held_out = random.Random(f"warmup-{seed}"), self._test_pairs()
        weights = [1.0] * (self.digits - 1) + [max(1.0, self.digits - 1.0)]
        out: list[tuple[str, str]] = []
        while len(out) < count:
            da, db = rng.choices(range(1, self.digits + 1), weights=weights, k=2)
            a, b = _operand(rng, da), _operand(rng, db)
            if (a, b) not in held_out:
                out.append((f"{a}+{b}=", scratchpad(a, b)))
        return out

    def reference_completion(self, problem: str, *, seed: int = 0) -> str | None:
        """The exact scratchpad of a prompt ``a+b=`` (`seed` is unused: the solution is unique), or None."""
        left, _, right = problem.strip().removesuffix("=").partition("+")
        if not (left.isascii() and left.isdigit() and right.isascii() and right.isdigit()):
            return None
        return scratchpad(int(left), int(right))


def gold_strings(answer) -> tuple[str, ...]:
    """The string alternatives of a gold: itself when it is a str, the str items of a list or tuple, else none
    (None, numbers, dicts and other values accept nothing, so a reward against them is 0, never an error)."""
    if isinstance(answer, str):
        return (answer,)
    if isinstance(answer, (list, tuple)):
        return tuple(a for a in answer if isinstance(a, str))
    return ()


def addition_reward(completion: str, answer: str | Sequence[str]) -> float:
    """1.0 when the completion is exactly ``<column sums>=<answer>`` with the right answer, else 0.0 (also
    for a completion that is not text or a gold that is not a string or a list of strings)."""
    if not isinstance(completion, str) or len(completion) >= 256:
        return 0.0
    match = _COMPLETION.fullmatch(completion.strip())
    if match is None:
        return 0.0
    return 1.0 if match.group(2) in gold_strings(answer) else 0.0


class TaskVerifier(VerifierBase):
    """An in-process verifier over a testbed reward function `reward(completion, answer)` (the checks are
    bounded, so no worker process is needed); subclasses set `reward`."""

    reward = staticmethod(lambda completion, answer: 0.0)

    def score(self, completions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> list[float]:
        return [self.reward(c, a) for c, a in zip(completions, answers, strict=True)]

    def close(self) -> None:
        return None

    def __enter__(self) -> "TaskVerifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AdditionVerifier(TaskVerifier):
    """The addition testbed's verifier (the check is a bounded regular expression)."""

    reward = staticmethod(addition_reward)
