"""The update phase of a step: micro-batches under a token budget, the forward passes an algorithm
declares it needs, its loss, gradient accumulation, clipping and the optimizer step.

Only the rows handed in are ever forwarded: for POPO the trainer hands in the positive rollouts alone,
so negatives cost no forward or backward pass here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from popo.algorithms import Algorithm, BatchTotals, LossInputs
from popo.distributed import Dist, reduce_update_metrics
from popo.logprobs import completion_outputs, masked_mean
from popo.losses import kl_penalty
from popo.rollout.base import Rollouts
from popo.rollout.sampling import normal_noise

# Loss metrics normalised by batch-global counts: they add up over micro-batches.
ADDITIVE_METRICS = frozenset({"loss", "nll", "sim", "cos_sim", "ent_loss", "pg_loss", "num_positive",
                              "num_positive_tokens", "entropy", "num_tokens", "adv_mean"})


@dataclass
class Models:
    """The policy and the optional companions an algorithm asks for."""

    policy: nn.Module
    target: nn.Module | None = None  # EMA copy of the policy (POPO's similarity term)
    predictor: nn.Module | None = None  # q_phi, trained with the policy
    reference: nn.Module | None = None  # frozen reference (GRPO's KL penalty)


def plan_micro_batches(batch: Rollouts, token_budget: int) -> list[torch.Tensor]:
    """Row indices of micro-batches: rows sorted by length, each micro-batch's padded size
    (rows x longest row) kept within `token_budget` (a single longer row still gets its own)."""
    lengths = batch.prompt_mask.sum(1) + batch.lengths  # [n]
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    groups: list[list[int]] = []
    for row in order:
        longest = int(lengths[groups[-1][0]]) if groups else 0
        if groups and (len(groups[-1]) + 1) * longest <= token_budget:
            groups[-1].append(row)
        else:
            groups.append([row])
    return [torch.tensor(sorted(g)) for g in groups]


def batch_totals(batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor, max_length: int) -> BatchTotals:
    mask = batch.completion_mask
    return BatchTotals(
        sequences=batch.num_rollouts,
        tokens=int(mask.sum()),
        positive_tokens=int(mask[positive].sum()),
        weight_sum=float(credit[positive].sum()),
        max_length=max_length,
    )


@torch.no_grad()
def sequence_logprobs(model: nn.Module, batch: Rollouts, token_budget: int) -> torch.Tensor:
    """Per-token log-probs [n, C] of the batch's completions under `model`, no gradient."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32,
                      device=batch.completion_ids.device)
    for rows in plan_micro_batches(batch, token_budget):
        sub = batch.select(rows)
        ids, attention, prompt_len = sub.sequences()
        lp = completion_outputs(model, ids, attention, prompt_len).logprobs  # [m, c]
        out[rows, : lp.shape[1]] = lp.float()
    return out


def _accumulate(total: dict[str, float], metrics: dict[str, float], share: float) -> None:
    for key, value in metrics.items():
        total[key] = total.get(key, 0.0) + (value if key in ADDITIVE_METRICS else share * value)


def update_policy(models: Models, optimizer: torch.optim.Optimizer, algorithm: Algorithm, cfg,
                  batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor, *, max_length: int,
                  token_budget: int, grad_clip: float, generator: torch.Generator | None,
                  params: list[nn.Parameter], dist: Dist | None = None,
                  row_seeds: torch.Tensor | None = None) -> dict[str, float]:
    """One or more optimizer updates on `batch` ([n] rows, `credit` [n], `positive` [n] bool).

    With `dist` (several processes) the batch is this rank's share: the loss normalisers are summed
    over ranks first and the gradients after, so every rank takes the one-process step; a rank with no
    rows still joins the collectives. `row_seeds` [n] (optional) key the target-feature noise per row,
    so it does not depend on how rows are split into micro-batches or processes.

    Returns the averaged metrics plus `grad_norm`, `skipped` (1 when a non-finite loss or gradient
    made the update skip) and `trained_rollouts` / `trained_tokens`.
    """
    dist = dist or Dist()
    totals = global_totals(batch_totals(batch, credit, positive, max_length), dist, batch.completion_ids.device)
    batch, credit, positive, row_seeds, share_tokens = drop_inert_rows(
        algorithm, cfg, batch, credit, positive, row_seeds, totals.tokens, dist)
    plans = plan_micro_batches(batch, token_budget)
    old = sequence_logprobs(models.policy, batch, token_budget) if algorithm.needs_old_logprobs(cfg) else None
    ref = sequence_logprobs(models.reference, batch, token_budget) if models.reference is not None else None
    entropy_in_loss = algorithm.needs_entropy(cfg)
    metrics: dict[str, float] = {}
    updates = cfg.updates_per_batch if old is not None else 1
    for _ in range(updates):
        optimizer.zero_grad(set_to_none=True)
        metrics = {}
        for rows in plans:
            sub = batch.select(rows)
            ids, attention, prompt_len = sub.sequences()
            width = sub.completion_ids.shape[1]
            out = completion_outputs(models.policy, ids, attention, prompt_len, need_entropy=True,
                                     need_features=models.target is not None, entropy_grad=entropy_in_loss)
            inputs = LossInputs(
                logprobs=out.logprobs, mask=sub.completion_mask, credit=credit[rows],
                positive=positive[rows], totals=totals,
                entropy=out.entropy if entropy_in_loss else None,
                old_logprobs=None if old is None else old[rows, :width],
                ref_logprobs=None if ref is None else ref[rows, :width], generator=generator)
            if models.target is not None:
                inputs.predicted = models.predictor(masked_mean(out.features, sub.completion_mask))
                if row_seeds is not None:
                    inputs.target_noise = normal_noise(row_seeds[rows], out.features.shape[-1])
                with torch.no_grad():
                    target = completion_outputs(models.target, ids, attention, prompt_len,
                                                need_logprobs=False, need_features=True)
                inputs.target = masked_mean(target.features, sub.completion_mask)
            loss, step_metrics = algorithm.loss(inputs, cfg)
            loss.backward()
            share = float(sub.completion_mask.sum()) / max(1, share_tokens)
            if "adv_mean" in step_metrics:  # a mean over rows: this micro-batch's share of the batch sum
                step_metrics["adv_mean"] = float(credit[rows].sum()) / max(1, totals.sequences)
            # token-mean entropy of the trained rows: this micro-batch's share of the batch total
            step_metrics["entropy"] = float(torch.where(sub.completion_mask, out.entropy.detach(), 0.0).sum()
                                            / max(1, totals.tokens))
            _accumulate(metrics, step_metrics, share)
        if not plans:  # every row was inert: the zero gradient a full forward would have given
            for p in params:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        dist.sum_grads(params)  # every rank now holds the one-process gradient
        metrics = reduce_update_metrics(metrics, dist)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(grad_norm)) and all(
            torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k in ADDITIVE_METRICS)
        metrics["grad_norm"] = float(grad_norm)
        metrics["skipped"] = 0.0 if finite else 1.0
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
    metrics["trained_rollouts"] = float(totals.sequences)
    metrics["trained_tokens"] = float(totals.tokens)
    metrics["micro_batches"] = dist.sum_values([len(plans)])[0]
    return metrics


def drop_inert_rows(algorithm: Algorithm, cfg, batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor,
                    row_seeds: torch.Tensor | None, tokens: int, dist: Dist):
    """Leave out the rows whose loss gradient is exactly zero (GRPO without a KL term: zero advantage,
    e.g. every rollout of an all-wrong or all-right group), so they cost no forward or backward pass.

    The loss normalisers were already counted over all rows, so the update equals the one over the
    whole batch. Returns the kept (batch, credit, positive, row_seeds) and the kept token count over all
    ranks (the weight of the averaged, non-additive metrics such as entropy)."""
    if not algorithm.zero_credit_inert(cfg):
        return batch, credit, positive, row_seeds, tokens
    keep = credit != 0  # [n]
    if not bool(keep.all()):
        batch, credit, positive = batch.select(keep), credit[keep], positive[keep]
        row_seeds = None if row_seeds is None else row_seeds[keep]
    return batch, credit, positive, row_seeds, int(dist.sum_values([float(batch.completion_mask.sum())])[0])


def global_totals(totals: BatchTotals, dist: Dist, device: torch.device) -> BatchTotals:
    """The batch counts summed over ranks (the one-process counts of the whole batch)."""
    if dist.world == 1:
        return totals
    seqs, tokens, pos_tokens, weight_sum = dist.sum_values(
        [totals.sequences, totals.tokens, totals.positive_tokens, totals.weight_sum])
    return BatchTotals(sequences=int(seqs), tokens=int(tokens), positive_tokens=int(pos_tokens),
                       weight_sum=weight_sum, max_length=totals.max_length)


@torch.no_grad()
def mean_token_kl(policy: nn.Module, target: nn.Module, batch: Rollouts, token_budget: int) -> float:
    """Monitoring only: k3 estimate of KL(policy || target) per completion token of `batch`."""
    if batch.num_rollouts == 0:
        return 0.0
    online = sequence_logprobs(policy, batch, token_budget)
    frozen = sequence_logprobs(target, batch, token_budget)
    kl = kl_penalty(online, frozen, "k3")
    return float(torch.where(batch.completion_mask, kl, 0.0).sum() / batch.completion_mask.sum().clamp(min=1))
