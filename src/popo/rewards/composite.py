"""The reward of a run as a weighted sum of reward functions: :class:`CompositeReward`.

Each part is either a built-in verifier (``score(completions, answers)``, e.g. the math verifier) or a user
function with TRL's signature run in a :class:`popo.rewards.functions.FunctionPool`. The total reward of a
completion is ``sum_i w_i * r_i`` over the parts, with these rules:

* ``None`` from a function means "no reward from me for this item": that term is left out of the sum and
  counted (``reward/<name>/none``); an item no part scored gets 0;
* a call that hangs, raises, crashes its worker, returns the wrong number of values or a value that is not
  a number, or a non-finite value (for those items only) is a failure: the item's **total** reward is 0
  (not merely that term: a policy must not gain by making a penalty function fail), it is counted
  (``reward/<name>/failed``), and the first failure of each kind of each function is named in the log.
  ``reward_failures`` counts the items whose total was zeroed that way (logged each step);
* when a function fails on every one of the first ``stop_after`` items it scores (default 32, counted
  exactly however many items the first step scores; it raises on every call, returns the wrong number of
  values, times out, ...), every total reward would be 0, whatever the other parts score: the run is not
  worth continuing, and :meth:`score_rows` raises :class:`popo.errors.TrainingHalted` naming the function
  and its first failure. ``stop_after=0`` keeps the old behaviour (count, log once, go on).

User functions receive ``prompts``, ``completions`` and one list per dataset column (the example's
``columns``, plus ``answer``, the gold as loaded, when the row has no ``answer`` column). A row whose prompt
was a chat (``messages`` set) is passed in TRL's conversational form: the prompt as its list of
``{role, content}`` messages and the completion as ``[{"role": "assistant", "content": text}]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from popo.errors import TrainingHalted
from popo.rewards.base import VerifierBase

__all__ = ["CompositeReward", "RewardPart", "dataset_columns", "reward_metrics"]


@dataclass
class RewardPart:
    """One term of the total: ``verifier`` (a built-in) or ``function`` (index into the pool's specs)."""

    name: str
    weight: float
    verifier: Any = None
    function: int | None = None


class CompositeReward(VerifierBase):
    """The weighted sum of ``parts``; user functions run in ``pool`` (a FunctionPool, or None without them).

    ``items_per_call`` rows go to one call of a user function (a failure costs at most those rows);
    ``log`` receives the one-line failure notices; ``stop_after`` makes a function that fails on every one of
    the first ``stop_after`` items an error (see the module docstring; 0: never).
    """

    def __init__(self, parts: Sequence[RewardPart], *, pool=None, items_per_call: int = 64,
                 log: Callable[[str], None] = print, stop_after: int = 32):
        if not parts:
            raise ValueError("a composite reward needs at least one part")
        if any(p.function is not None for p in parts) and pool is None:
            raise ValueError("user reward functions need a FunctionPool")
        self.parts, self.pool, self.items_per_call, self.log = list(parts), pool, max(1, items_per_call), log
        self._logged: set[tuple[str, str]] = set()
        self._counts = self._zero_counts()
        self._failed_items = 0  # items whose total a failure zeroed, since the last take_metrics
        self._first_error: dict[str, str] = {}  # part name -> its first failure (its kind, unless an error)
        self.stop_after = max(0, stop_after)
        self._early: dict[str, list[int]] = {p.name: [0, 0] for p in self.parts}  # name -> [items, failed]

    # -- the Verifier interface ------------------------------------------------------------------------
    def score(self, completions: Sequence[str], answers: Sequence) -> list[float]:
        """Rewards without prompts or dataset columns (user functions see empty prompts and ``answer``)."""
        return self.score_rows([""] * len(completions), completions, [_Gold(a) for a in answers])

    def score_rows(self, prompts: Sequence[str], completions: Sequence[str], examples: Sequence) -> list[float]:
        """Total rewards of completions of ``prompts`` (rendered text), for ``examples`` (each with ``answer``
        and optionally ``messages`` and ``columns``), one per completion."""
        n = len(completions)
        if not (len(prompts) == len(examples) == n):
            raise ValueError(f"got {n} completions, {len(prompts)} prompts and {len(examples)} examples")
        answers = [ex.answer for ex in examples]
        values = {id(p): p.verifier.score(list(completions), answers) for p in self.parts if p.verifier is not None}
        users = [p for p in self.parts if p.function is not None]
        if users:
            values.update(self._call_functions(users, prompts, completions, examples))
        total, failed = [0.0] * n, [False] * n
        for part in self.parts:
            stats = self._counts[part.name]
            for i, v in enumerate(values[id(part)]):
                if isinstance(v, _Failure):
                    failed[i] = True
                    stats["failed"] += 1
                elif v is None:
                    stats["none"] += 1
                else:
                    stats["scored"] += 1
                    stats["sum"] += v
                    total[i] += part.weight * v
        self._failed_items += sum(failed)
        self._check_early_failures(values, users)
        return [0.0 if bad else t for t, bad in zip(total, failed)]

    def _check_early_failures(self, values: dict[int, list], users: list[RewardPart]) -> None:
        """Raise when a user function has failed on every one of the first ``stop_after`` items it scored."""
        for part in users:
            early = self._early.get(part.name)
            if early is None or not self.stop_after:
                continue
            first = values[id(part)][: self.stop_after - early[0]]  # items past the first stop_after do not count
            early[0] += len(first)
            early[1] += sum(isinstance(v, _Failure) for v in first)
            if early[0] < self.stop_after:
                continue
            del self._early[part.name]  # decided once
            if early[1] == early[0]:
                raise TrainingHalted(self._stop_message(part, early[0]))

    def _stop_message(self, part: RewardPart, items: int) -> str:
        """Why the run stops: `part` failed on each of the first `items` items it scored."""
        others = [p.name for p in self.parts if p is not part]
        why = ("every reward would be 0" if not others else
               f"a failure sets the item's whole reward to 0, so the scores of {', '.join(others)} would count for "
               "nothing and every reward would be 0")
        return (f"reward function {part.name} failed on every one of the first {items} items it scored (first "
                f"failure: {self._first_error.get(part.name, 'unknown')}); {why}, and nothing would be learned. "
                "Fix the function (reward.functions), or call it by hand on a few rows")

    def close(self) -> None:
        for part in self.parts:
            if part.verifier is not None:
                part.verifier.close()
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> CompositeReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metrics ---------------------------------------------------------------------------------------
    def take_metrics(self) -> dict[str, float]:
        """Counts since the last call, as ``reward/<name>/{sum,scored,none,failed}``, plus the built-in verifiers'
        own counts (e.g. the math verifier's ``reward/timeouts``, added over parts). Sums over ranks can be added
        key by key; :func:`reward_metrics` turns them into the logged values."""
        counts, self._counts = self._counts, self._zero_counts()
        failed, self._failed_items = self._failed_items, 0
        out = {f"reward/{name}/{k}": v for name, c in counts.items() for k, v in c.items()}
        for part in self.parts:
            for key, value in (part.verifier.take_metrics() if part.verifier is not None else {}).items():
                out[key] = out.get(key, 0.0) + value
        return {**out, "reward_failures": float(failed)}

    def _zero_counts(self) -> dict[str, dict[str, float]]:
        return {p.name: dict.fromkeys(("sum", "scored", "none", "failed"), 0.0) for p in self.parts}

    # -- user functions --------------------------------------------------------------------------------
    def _call_functions(self, users: list[RewardPart], prompts, completions, examples) -> dict[int, list]:
        n, size = len(completions), self.items_per_call
        chat = [getattr(ex, "messages", None) for ex in examples]
        shown_prompts = [list(m) if m else p for m, p in zip(chat, prompts)]
        shown = [[{"role": "assistant", "content": c}] if m else c for m, c in zip(chat, completions)]
        columns = _columns(examples)
        calls, where = [], []
        for part in users:
            for start in range(0, n, size):
                stop = min(n, start + size)
                calls.append((part.function, shown_prompts[start:stop], shown[start:stop],
                              {k: v[start:stop] for k, v in columns.items()}))
                where.append((part, start, stop))
        out: dict[int, list] = {id(p): [None] * n for p in users}
        for (part, start, stop), (kind, payload) in zip(where, self.pool.run(calls)):
            values = out[id(part)]
            if kind != "ok":
                self._notice(part, kind, f"{payload} (a call of {stop - start} items)")
                values[start:stop] = [_Failure()] * (stop - start)
                continue
            for i, v in enumerate(payload, start):
                if v is not None and not math.isfinite(v):
                    self._notice(part, "non-finite", f"returned {v} for an item")
                    v = _Failure()
                values[i] = v
        return out

    def _notice(self, part: RewardPart, kind: str, detail: str) -> None:
        self._first_error.setdefault(part.name, detail if kind == "error" else f"{kind}: {detail}")
        if (part.name, kind) in self._logged:
            return
        self._logged.add((part.name, kind))
        self.log(f"reward function {part.name}: {kind}: {detail}; those items get reward 0 (counted in "
                 f"reward/{part.name}/failed; further {kind} failures of this function are not logged)")


def reward_metrics(counts: dict[str, float]) -> dict[str, float]:
    """The logged values of a verifier's summed ``take_metrics`` counts: for a :class:`CompositeReward`, per
    part, the mean over scored items (``reward/<name>``) and the numbers of items with None (``/none``) and
    failures (``/failed``), and ``reward_failures``: the items whose total reward a failure set to 0; any other
    count (the math verifier's ``reward/timeouts``, ...) as the whole number it is."""
    parts = {key[: -len("/sum")] for key in counts if key.endswith("/sum")}
    out = {key: int(value) for key, value in counts.items()
           if key.rpartition("/")[0] not in parts and not key.endswith("/sum")}
    for key in sorted(counts):
        if key.endswith("/sum"):
            base = key[: -len("/sum")]
            scored = counts.get(f"{base}/scored", 0.0)
            out[base] = counts[key] / scored if scored else 0.0
            out[f"{base}/none"] = int(counts.get(f"{base}/none", 0))
            out[f"{base}/failed"] = int(counts.get(f"{base}/failed", 0))
    return out


class _Failure:
    """Marks an item whose value could not be used."""


class _Gold:
    """An example holding only its gold answer (for :meth:`CompositeReward.score`)."""

    def __init__(self, answer):
        self.answer = answer


def dataset_columns(examples: Sequence) -> dict[str, list]:
    """The keyword columns user reward functions receive for `examples` (see the module docstring)."""
    return _columns(examples)


def _columns(examples: Sequence) -> dict[str, list]:
    """One list per dataset column over ``examples`` (None where a row lacks it), plus ``answer``."""
    rows = [dict(getattr(ex, "columns", None) or {}) for ex in examples]
    for row, ex in zip(rows, examples):
        row.setdefault("answer", ex.answer)
    keys = sorted({k for row in rows for k in row})
    return {k: [row.get(k) for row in rows] for k in keys}
