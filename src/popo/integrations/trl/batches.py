"""From one TRL generation batch to POPO's micro-batches: positives only, globally normalised.

TRL's `GRPOTrainer` generates a batch once per optimizer step and hands it to `compute_loss` in
`steps_per_generation` slices. For POPO the slices are rebuilt here:

- the rows are popo `Rollouts` (left-padded prompt, right-padded completion) read from TRL's tensors;
  a row is *positive* when its reward (TRL's weighted sum over reward functions) is above the threshold
  and it has at least one trainable token;
- only the training rows are kept: the positives (every row when POPO's entropy covers all rows);
  negatives are dropped here, before any forward pass;
- the loss normalisers (training rows and tokens, positive tokens, weight sum) are summed over the
  whole generation batch and all processes, so each micro-batch's loss is its share of the batch loss
  and the loss and gradients do not depend on how the batch is split;
- the weights come from the sampling log-probs when TRL has them (vLLM); otherwise each micro-batch
  holds whole prompts, and the weights are computed from the micro-batch's own forward pass
  (`MicroBatch.credit_from`), so no extra pass over the completions is needed;
- the similarity term's target noise is keyed by (seed, step, global row), popo's own keying, so it too
  is the same however the rows are split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from popo.algorithms import Algorithm, BatchTotals, Shares
from popo.distributed import Dist
from popo.errors import SetupError
from popo.logprobs import masked_mean
from popo.models import Models
from popo.rollout.base import Rollouts
from popo.seeds import noise_seed  # the target noise's keys: both trainers draw the same
from popo.step_core import batch_totals
from popo.update import micro_batch_loss


@dataclass
class MicroBatch:
    """The rows one `compute_loss` call forwards, and what their loss needs (m rows, k prompts)."""

    rows: Rollouts  # [m] training rows
    positive: torch.Tensor  # [m] bool
    credit: torch.Tensor | None  # [m] POPO weights; None: computed from this micro-batch's forward
    slots: torch.Tensor  # [m] each row's index among its prompts' k*G rollouts
    group_rewards: torch.Tensor  # [k*G] rewards of every rollout of those prompts
    group_lengths: torch.Tensor  # [k*G] their completion lengths
    row_seeds: torch.Tensor  # [m] keys of the target noise
    totals: BatchTotals  # over the whole generation batch and all processes
    forwarded_tokens: int  # completion tokens of all training rows, all processes

    def credit_from(self, mean_logprobs: torch.Tensor, algorithm: Algorithm, cfg) -> torch.Tensor:
        """The weights [m] from the rows' mean log-probs [m] (detached), computed per whole prompt."""
        full = torch.zeros(self.group_rewards.shape, dtype=mean_logprobs.dtype, device=mean_logprobs.device)
        full[self.slots] = mean_logprobs.detach()  # the negatives' entries are never read
        credit = algorithm.credit(self.group_rewards, full, self.group_lengths.float(), self.rows.group_size, cfg)
        return credit[self.slots]

    def loss(self, models: Models, algorithm: Algorithm, cfg) -> tuple[torch.Tensor, Shares]:
        """The loss of these rows (with gradient) and its metrics (`Shares`, added up over the window), by popo's
        own micro-batch path (`popo.update.micro_batch_loss`: the same forward passes and core as popo's
        trainer); without rows an exact zero and no metrics (the gradient sum still counts this process). With
        no precomputed credit, the weights come from this forward's own log-probs (on-policy: the sampler's)."""
        rows = self.rows
        if rows.num_rollouts == 0:
            return torch.zeros((), device=models.device, requires_grad=True), Shares()
        return micro_batch_loss(
            models, algorithm, cfg, rows, self.credit, self.positive, self.totals, row_seeds=self.row_seeds,
            forwarded_tokens=self.forwarded_tokens,
            credit_from=lambda out: self.credit_from(masked_mean(out.logprobs.detach(), rows.completion_mask),
                                                     algorithm, cfg))


def to_rollouts(outputs: dict, group_size: int) -> tuple[Rollouts, bool]:
    """popo `Rollouts` of TRL's generation output, and whether it carries sampling log-probs."""
    for key in ("tool_mask", "pixel_values", "token_type_ids", "mm_token_type_ids"):
        if key in outputs:
            raise SetupError(f"loss_type='popo' does not support `{key}` inputs yet (tool calling and multimodal "
                             "models); see docs/integrations.md")
    mask = outputs["completion_mask"].bool()
    sampled = outputs.get("sampling_per_token_logps")
    logprobs = torch.zeros(mask.shape, device=mask.device) if sampled is None else torch.nan_to_num(sampled.float())
    n = mask.shape[0]
    rollouts = Rollouts(prompt_ids=outputs["prompt_ids"], prompt_mask=outputs["prompt_mask"].bool(),
                        completion_ids=outputs["completion_ids"], completion_mask=mask,
                        sampling_logprobs=torch.where(mask, logprobs, 0.0),
                        truncated=torch.zeros(n, dtype=torch.bool, device=mask.device), texts=[""] * n,
                        group_size=group_size)
    return rollouts, sampled is not None


def split_units(sizes: list[int], parts: int) -> list[list[int]]:
    """Consecutive units (prompts or rows) in `parts` contiguous bins of about equal total size: unit i
    goes to the bin its midpoint falls in. Bins may be empty; every unit is placed once, in order."""
    total = sum(sizes)
    bins: list[list[int]] = [[] for _ in range(parts)]
    start = 0
    for i, size in enumerate(sizes):
        mid = start + size / 2
        bins[min(parts - 1, int(mid * parts / total)) if total else 0].append(i)
        start += size
    return bins


def plan(outputs: dict, rewards: torch.Tensor, *, group_size: int, algorithm: Algorithm, cfg, parts: int,
         dist: Dist, seed: int, step: int, first_row: int) -> tuple[list[MicroBatch], dict[str, float]]:
    """`parts` micro-batches of this process's share of a generation batch, and the batch's counts
    summed over processes (for the logs).

    Args:
        outputs: TRL's `_generate_and_score_completions` output for this process's n rows.
        rewards: [n] this process's rewards (NaN for an unscorable completion: never positive).
        group_size: G, completions per prompt; the n rows are whole prompts, G consecutive rows each.
        algorithm / cfg: popo's loss-table entry and `algo` settings.
        parts: micro-batches to make (TRL's steps per generation).
        dist: the processes (sums over them are collectives: every process calls `plan`).
        seed / step / first_row: keys of the target noise; `first_row` is this process's first row in
            the global batch.
    """
    G = group_size
    rollouts, sampled = to_rollouts(outputs, G)
    n = rollouts.num_rollouts
    lengths = rollouts.lengths
    positive = (rewards > cfg.reward_threshold) & (lengths > 0)  # [n]; an empty row has nothing to learn
    rewards = torch.where(positive, rewards, float("-inf"))  # what the weights see: exactly these positives
    train = torch.ones_like(positive) if algorithm.needs_negatives(cfg) else positive
    credit = algorithm.credit(rewards, rollouts.mean_logprobs, lengths.float(), G, cfg) if sampled else None
    mask = rollouts.completion_mask
    groups_with_positive = positive.view(-1, G).any(dim=1)
    # W: each prompt's weights sum to one over its positives, so the weight sum is the count of such prompts;
    # counted, since with `generate` the weights come from the forward pass (`MicroBatch.credit_from`)
    totals = batch_totals(mask[train], None, positive[train], max_length=int(mask.shape[1]), dist=dist,
                          weight_sum=float(groups_with_positive.sum()))
    sums = dist.sum_values([int(groups_with_positive.sum()), int(positive.sum()), n])
    seeds = torch.zeros(n, dtype=torch.int64, device=mask.device)
    rows = train.nonzero().flatten().tolist()  # only the training rows' noise is ever drawn
    seeds[rows] = torch.tensor([noise_seed(seed, step, first_row + i) for i in rows], dtype=torch.int64,
                               device=mask.device)
    # whole prompts per micro-batch when the weights come from the forward pass; else any rows
    per_unit = train.view(-1, G).sum(dim=1) if credit is None else train.long()
    bins = split_units(per_unit.tolist(), parts)
    unit_rows = G if credit is None else 1
    batches = []
    for units in bins:
        index = torch.tensor([u * unit_rows + j for u in units for j in range(unit_rows)], dtype=torch.long,
                             device=mask.device)
        index = index[train[index]]
        prompts = torch.unique(index // G)  # sorted, so the rows of `group_rows` are ascending
        group_rows = (prompts.unsqueeze(1) * G + torch.arange(G, device=mask.device)).flatten()
        slots = torch.searchsorted(group_rows, index)
        batches.append(MicroBatch(
            rows=rollouts.select(index), positive=positive[index],
            credit=None if credit is None else credit[index], slots=slots, group_rewards=rewards[group_rows],
            group_lengths=lengths[group_rows], row_seeds=seeds[index], totals=totals,
            forwarded_tokens=totals.tokens))
    counts = {"positives": sums[1], "rollouts": sums[2], "rows_forwarded": float(totals.sequences),
              "prompts_with_positive": sums[0]}
    return batches, counts
