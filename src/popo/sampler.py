"""Sampling one step's groups, with dynamic sampling: a prompt whose group carries no learning signal (the loss
table's `group_has_signal`) is replaced by a fresh prompt, for up to `rollout.max_sampling_rounds` rounds; a
position still without signal keeps its last group.

The fresh prompt and its seed depend only on (seed, step, round, position), so any number of processes draws
what one process draws, and every rank runs the same rounds (ranks without a missing group wait in the
collectives). `GroupSampler` owns this bookkeeping; the trainer hands it a `draw` function (generate G rollouts
for some prompts and verify them) and gets back the step's batch and its counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from popo.data.stream import PromptStream
from popo.distributed import Dist
from popo.rollout.base import Rollouts
from popo.seeds import refill_order_seed, refill_seed, sample_seed

Draw = Callable[[list[int], list[int]], tuple[Rollouts | None, torch.Tensor]]
"""(prompt indices, prompt seeds) -> (their G rollouts each, or None for no prompt; rewards [len * G])."""


@dataclass
class SampledBatch:
    """One step's rollouts ([N = B_rank * G] rows, prompt by prompt), their rewards [N] and the sampling and
    reward metrics (dynamic sampling's rounds and dropped groups, a composite reward's counts)."""

    rollouts: Rollouts
    rewards: torch.Tensor
    metrics: dict[str, float]


@dataclass
class GroupSampler:
    """G verified rollouts for each of a rank's prompts, refilling groups without signal when asked."""

    seed: int
    group_size: int
    prompts_per_step: int
    num_prompts: int  # prompts in the training set
    dynamic: bool
    max_rounds: int
    has_signal: Callable[[torch.Tensor], torch.Tensor]  # rewards [B, G] -> [B] bool
    pad_id: int
    dist: Dist

    def sample(self, indices: list[int], positions: range, step: int, draw: Draw) -> SampledBatch:
        """The step's batch for this rank's prompts `indices` (at `positions` in the global batch)."""
        rollouts, rewards = draw(indices, [sample_seed(self.seed, step, p) for p in positions])
        if not self.dynamic:
            return SampledBatch(rollouts, rewards, {})
        return self._refill(indices, positions, step, draw, rollouts, rewards)

    def _refill(self, indices: list[int], positions: range, step: int, draw: Draw, rollouts: Rollouts,
                rewards: torch.Tensor) -> SampledBatch:
        G = self.group_size
        groups = [(rollouts, rewards)]  # every group sampled this step, round by round
        source = list(range(len(indices)))  # position k -> the index of its group among all groups sampled
        missing = self._without_signal(rewards)
        fresh_prompts = PromptStream(self.num_prompts, self.prompts_per_step, refill_order_seed(self.seed))
        rounds = 1
        while rounds < self.max_rounds and self.dist.any(bool(missing)):
            fresh = fresh_prompts.batch(step * (self.max_rounds - 1) + rounds - 1)
            first = sum(len(r) // G for _, r in groups)
            part = draw([fresh[positions[k]] for k in missing],
                        [refill_seed(self.seed, step, positions[k], rounds) for k in missing])
            groups.append(part)
            for j, k in enumerate(missing):
                source[k] = first + j
            missing = [missing[j] for j in self._without_signal(part[1])]  # the refills still without signal
            rounds += 1
        return self._assemble(groups, source, len(indices), len(missing), rounds)

    def _without_signal(self, rewards: torch.Tensor) -> list[int]:
        """The positions (0, 1, ...) of the groups in `rewards` [groups * G] that carry no learning signal
        (none when there are no rows)."""
        if rewards.numel() == 0:
            return []
        ok = self.has_signal(rewards.view(-1, self.group_size)).tolist()
        return [i for i, good in enumerate(ok) if not good]

    def _assemble(self, groups: list, source: list[int], prompts: int, unfilled: int, rounds: int) -> SampledBatch:
        """The batch made of each position's last group, with the counters summed over ranks."""
        G = self.group_size
        rows = torch.tensor([g * G + j for g in source for j in range(G)])
        rewards = torch.cat([r for _, r in groups])[rows.to(groups[0][1].device)]
        rollouts = Rollouts.concat([x for x, _ in groups if x is not None], pad_id=self.pad_id).select(rows)
        sampled, kept, unfilled = self.dist.sum_values([sum(len(r) // G for _, r in groups), prompts - unfilled,
                                                        unfilled])
        dropped = int(sampled) - self.prompts_per_step
        return SampledBatch(rollouts, rewards, {
            "sampling/rounds": rounds, "sampling/kept_groups": int(kept), "sampling/unfilled_groups": int(unfilled),
            "sampling/dropped_groups": dropped, "sampling/extra_rollouts": dropped * G})
