"""The rollout engine interface and the batch of rollouts it returns.

Layout of a batch of N = B·G rollouts, rows ordered prompt by prompt (G rows each):

    prompt_ids      [N, P]  left-padded prompt tokens        prompt_mask      [N, P]
    completion_ids  [N, C]  right-padded completion tokens   completion_mask  [N, C]
    sampling_logprobs [N, C] log-prob of each sampled token under the distribution it was drawn from
                             (after temperature and top-p), 0 where the mask is 0
    truncated       [N]     no end-of-sequence within the token limit

The completion mask covers the generated tokens up to and including the first end-of-sequence token,
so the policy also learns when to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` means greedy decoding."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Rollouts:
    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P] bool
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C] bool
    sampling_logprobs: torch.Tensor  # [N, C] float32
    truncated: torch.Tensor  # [N] bool
    texts: list[str]  # decoded completions, special tokens removed
    group_size: int

    @property
    def num_rollouts(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.completion_mask.sum(dim=1)

    @property
    def mean_logprobs(self) -> torch.Tensor:  # [N]
        """Length-normalised sequence log-prob under the sampling policy (0 for empty completions)."""
        total = torch.where(self.completion_mask, self.sampling_logprobs, 0.0).sum(dim=1)
        return total / self.lengths.clamp(min=1)

    @classmethod
    def concat(cls, parts: list["Rollouts"], *, pad_id: int) -> "Rollouts":
        """Join batches row-wise, re-padding prompts on the left and completions on the right."""
        if len(parts) == 1:
            return parts[0]
        width_p = max(p.prompt_ids.shape[1] for p in parts)
        width_c = max(p.completion_ids.shape[1] for p in parts)

        def pad(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
            extra = width - t.shape[1]
            return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

        return cls(
            prompt_ids=torch.cat([pad(p.prompt_ids, width_p, pad_id, True) for p in parts]),
            prompt_mask=torch.cat([pad(p.prompt_mask, width_p, False, True) for p in parts]),
            completion_ids=torch.cat([pad(p.completion_ids, width_c, pad_id, False) for p in parts]),
            completion_mask=torch.cat([pad(p.completion_mask, width_c, False, False) for p in parts]),
            sampling_logprobs=torch.cat([pad(p.sampling_logprobs, width_c, 0.0, False) for p in parts]),
            truncated=torch.cat([p.truncated for p in parts]),
            texts=[t for p in parts for t in p.texts],
            group_size=parts[0].group_size,
        )

    def select(self, rows: torch.Tensor) -> "Rollouts":
        """The rollouts at `rows` (a bool mask [N] or index tensor), with padding columns trimmed."""
        index = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
        tensors = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        texts = [self.texts[i] for i in index.tolist()]
        return Rollouts(**tensors, texts=texts, group_size=self.group_size).trimmed()

    def trimmed(self) -> "Rollouts":
        """Drop prompt columns that are padding in every row and completion columns past the longest."""
        if self.num_rollouts == 0:
            return self
        prompt_cols = self.prompt_mask.any(dim=0).nonzero()
        first = int(prompt_cols[0]) if len(prompt_cols) else self.prompt_mask.shape[1]
        last = int(self.lengths.max())
        return Rollouts(
            prompt_ids=self.prompt_ids[:, first:],
            prompt_mask=self.prompt_mask[:, first:],
            completion_ids=self.completion_ids[:, :last],
            completion_mask=self.completion_mask[:, :last],
            sampling_logprobs=self.sampling_logprobs[:, :last],
            truncated=self.truncated,
            texts=self.texts,
            group_size=self.group_size,
        )

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input_ids [N, P+C], attention_mask [N, P+C], P) for a teacher-forced forward pass."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        attention_mask = torch.cat([self.prompt_mask, self.completion_mask], dim=1).long()
        return input_ids, attention_mask, self.prompt_ids.shape[1]


def plan_micro_batches(batch: Rollouts, token_budget: int) -> list[torch.Tensor]:
    """Row indices of micro-batches: rows sorted by length, each micro-batch's padded size kept within
    `token_budget` (a single longer row still gets its own). The padded size is what the forward pass
    sees: rows x (longest prompt + longest completion) of the micro-batch."""
    prompt_lengths, completion_lengths = batch.prompt_mask.sum(1), batch.lengths  # [n], [n]
    order = torch.argsort(prompt_lengths + completion_lengths, descending=True, stable=True).tolist()
    prompt_lengths, completion_lengths = prompt_lengths.tolist(), completion_lengths.tolist()
    groups: list[list[int]] = []
    width_p = width_c = 0
    for row in order:
        p, c = max(width_p, prompt_lengths[row]), max(width_c, completion_lengths[row])
        if groups and (len(groups[-1]) + 1) * (p + c) <= token_budget:
            groups[-1].append(row)
            width_p, width_c = p, c
        else:
            groups.append([row])
            width_p, width_c = prompt_lengths[row], completion_lengths[row]
    return [torch.tensor(sorted(g)) for g in groups]


class RolloutEngine(Protocol):
    """What the trainer and the evaluation need from a sampler: every method they call is listed here.

    `owns_weights` says whether the engine samples from its own copy of the weights (vLLM), which
    `push_weights` refreshes after each update, or from the policy module itself (the HF engine, whose
    `push_weights` does nothing)."""

    owns_weights: bool

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, *,
                 seed: int | None = None, prompt_seeds: Sequence[int] | None = None) -> Rollouts:
        """`n` rollouts per prompt, rows grouped by prompt. Sample j of prompt i is drawn from the seed
        `row_seed(s_i, j)`, with s_i = `prompt_seeds[i]`, else `row_seed(seed, i)`, else a random seed."""
        ...

    def push_weights(self, policy: torch.nn.Module) -> None:
        """Make later samples come from `policy`'s current weights."""
        ...
