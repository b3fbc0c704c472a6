"""The countdown testbed task: its problem universe, its four disjoint splits and its warm-up pairs.

Rules, solver and verifier are in `popo.testbed.countdown`. The universe is every problem with
`numbers` given numbers in 1..`max_number` and a target in 1..`max_target` that has at least one
solution; a problem is its *sorted* multiset of numbers and its target, so two prompts that list the
same numbers in another order are the same problem. The universe is shuffled once (from `seed`) and cut
into test, validation, then RL-train and warm-up problems (alternately), so the four splits are disjoint
under any permutation of the numbers. Each prompt lists its numbers in a seeded random order.

The warm-up imitates, for each example, one solution drawn at random from *all* the solver's solutions
of a warm-up problem, so the warmed-up model spreads its probability over several correct chains rather
than one: that is what gives POPO's weights and similarity term something to act on.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from functools import cached_property

from popo.data.example import Example
from popo.errors import ConfigError
from popo.testbed.countdown import (DEFAULT_RULES, CountdownVerifier, final_values, format_spec, parse_spec,
                                    reachable, solutions)

ALPHABET = "0123456789+-*/=,;>:"
"""The countdown tokenizer's characters (beside pad, eos and bos)."""

Problem = tuple[tuple[int, ...], int]  # (sorted numbers, target)
BUILT_IN_SPLITS = ("train", "validation", "test", "warmup")


def parse_reserved(text: str) -> tuple[tuple[str, int], ...]:
    """`testbed.reserved` (`name:size,...`) as ((name, size), ...); a clear error for a malformed entry, a
    repeated name, a built-in split's name or a size below 1."""
    out: list[tuple[str, int]] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, size = entry.partition(":")
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) or not size.isdigit() or int(size) < 1:
            raise ConfigError(f"testbed.reserved: {entry!r} is not NAME:SIZE (lower-case letters, digits and '-', "
                              f"a size of at least 1), e.g. demo:500")
        if name in BUILT_IN_SPLITS or name in dict(out):
            raise ConfigError(f"testbed.reserved: the split name {name!r} is "
                              f"{'a built-in split' if name in BUILT_IN_SPLITS else 'given twice'}")
        out.append((name, int(size)))
    return tuple(out)


@dataclass(frozen=True)
class CountdownTask:
    """Generator of countdown problems (see the module docstring for the splits)."""

    numbers: int = 4
    max_number: int = 9
    max_target: int = 99
    seed: int = 0
    test_size: int = 1000
    validation_size: int = 500
    reserved: tuple[tuple[str, int], ...] = ()
    """Held-out splits carved from the end of the RL-train split (`parse_reserved`): the first name takes the
    last problems, the next the ones before them, so a name keeps its problems whatever names follow it."""
    name: str = "countdown"
    alphabet: str = ALPHABET

    def describe(self) -> str:
        return (f"countdown with {self.numbers} numbers in 1..{self.max_number} and targets in "
                f"1..{self.max_target} (+ - * /, each number once)")

    def cache_fields(self) -> dict:
        """What the warmed-up model depends on, beside the warm-up settings (part of the cache key)."""
        return {"task": self.name, "numbers": self.numbers, "max_number": self.max_number,
                "max_target": self.max_target, "seed": self.seed, "test_size": self.test_size,
                "validation_size": self.validation_size, "rules": DEFAULT_RULES.__dict__}

    def verifier(self) -> CountdownVerifier:
        return CountdownVerifier()

    # ------------------------------------------------------------------ the universe and its splits
    @cached_property
    def universe(self) -> list[Problem]:
        """Every solvable problem, sorted."""
        out, memo = [], {}
        for numbers in itertools.combinations_with_replacement(range(1, self.max_number + 1), self.numbers):
            out += [(numbers, t) for t in sorted(final_values(numbers, memo=memo)) if 1 <= t <= self.max_target]
        return out

    @cached_property
    def splits(self) -> dict[str, list[Problem]]:
        """The problems of each split: test, validation, train (RL) and warmup."""
        problems = list(self.universe)
        random.Random(f"countdown-{self.seed}").shuffle(problems)
        held = self.test_size + self.validation_size
        if held > len(problems) // 2:
            raise ConfigError(f"testbed.test_size + testbed.validation_size = {held} leaves too few of the "
                              f"{len(problems)} countdown problems for training (at most half may be held out)")
        rest = problems[held:]
        out = {"test": problems[:self.test_size], "validation": problems[self.test_size:held],
               "train": rest[0::2], "warmup": rest[1::2]}
        train, kept = out["train"], len(out["train"])
        if sum(size for _, size in self.reserved) > kept // 2:
            raise ConfigError(f"testbed.reserved holds {sum(s for _, s in self.reserved)} problems: at most half of "
                              f"the {kept} RL-train problems may be reserved")
        for split, size in self.reserved:
            out[split], kept = train[kept - size:kept], kept - size
        out["train"] = train[:kept]
        return out

    def _examples(self, split: str, problems: list[Problem]) -> list[Example]:
        out = []
        for index, (numbers, target) in enumerate(problems):
            shown = list(numbers)
            random.Random(f"order-{split}-{self.seed}-{index}").shuffle(shown)
            spec = format_spec(shown, target)
            out.append(Example(problem=spec + ":", answer=spec, id=f"{split}-{index}"))
        return out

    def test_examples(self) -> list[Example]:
        """The held-out test split: read only for final tables."""
        return self._examples("test", self.splits["test"])

    def validation_examples(self) -> list[Example]:
        """The validation split: training-time evaluation and every choice (learning rates, sweeps)."""
        return self._examples("validation", self.splits["validation"])

    def reserved_examples(self, split: str) -> list[Example]:
        """A split of `reserved`: problems no run trains on, read only by what reserved them."""
        if split not in dict(self.reserved):
            raise ConfigError(f"testbed split {split!r} is not reserved (testbed.reserved names "
                              f"{', '.join(dict(self.reserved)) or 'none'})")
        return self._examples(split, self.splits[split])

    def train_examples(self, count: int, *, seed: int) -> list[Example]:
        """RL prompts: up to `count` problems of the RL-train split, in an order drawn from `seed`."""
        problems = list(self.splits["train"])
        random.Random(f"train-{seed}").shuffle(problems)
        return self._examples("train", problems[:count])

    def warmup_pairs(self, count: int, *, seed: int) -> list[tuple[str, str]]:
        """(prompt, completion) pairs: warm-up problems drawn with replacement, numbers in a random order,
        and one solution drawn uniformly from all of each problem's solutions."""
        pool, found = self.splits["warmup"], {}
        rng = random.Random(f"warmup-{seed}")
        out = []
        for _ in range(count):
            numbers, target = pool[rng.randrange(len(pool))]
            if numbers not in found:
                found[numbers] = reachable(numbers)
            shown = list(numbers)
            rng.shuffle(shown)
            out.append((format_spec(shown, target) + ":", rng.choice(found[numbers][target])))
        return out

    def reference_completion(self, problem: str, *, seed: int = 0) -> str | None:
        """One solution of a prompt (drawn from `seed` among all of them), or None when it is not a
        countdown prompt or has no solution."""
        parsed = parse_spec(problem)
        if parsed is None:
            return None
        found = solutions(*parsed)
        return random.Random(f"reference-{seed}-{problem}").choice(found) if found else None
