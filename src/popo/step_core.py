"""The framework-independent pieces of one training step, written once for popo's trainer, the TRL bridge and
verl's engine:

- `batch_totals`: the batch's loss normalisers (N+, W, counts) over all ranks, before any micro-batch;
- `loss_inputs`: from the arrays one micro-batch's forward passes produced (`PolicyArrays`: log-probs,
  entropies, per-token features, the EMA target's pooled features, the mask) and the rows' credit, keys and
  the batch's global counts to the loss table's `LossInputs`: the predictor's projection of the pooled
  features, the target noise keyed per row (`popo.seeds.normal_noise`), this micro-batch's token share;
- `loss_and_shares`: the loss-table entry on those inputs, plus the policy's entropy share and the
  non-finite flag every framework logs and steps on;
- `metrics_finite` and `clip_and_step`: clip the policy's and the predictor's gradients together, then step
  or skip (a non-finite loss, metric or norm drops every gradient, so nothing moves).

Each framework keeps only what is its own: how it runs the forward passes (`popo.update` through `Models`,
`popo.integrations.verl.engine` through verl's model inputs and outputs), its batch layout and micro-batch
plan, and its collectives. The EMA step after an optimizer step is `popo.ema.ema_step_`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from popo.algorithms import Algorithm, BatchTotals, LossInputs, Shares
from popo.distributed import Dist
from popo.logprobs import masked_mean
from popo.seeds import normal_noise


def batch_totals(mask: torch.Tensor, credit: torch.Tensor | None, positive: torch.Tensor, *, max_length: int,
                 dist: Dist, weight_sum: float | None = None) -> BatchTotals:
    """The loss normalisers of a batch whose training rows on this rank are `mask` [n, C] (completion tokens),
    `credit` [n] and `positive` [n], summed over `dist`'s ranks (one collective; none with one process): rows,
    tokens, positive tokens (N+) and the positives' credit sum (W). Every micro-batch's loss normalised by them
    is its share of the batch's loss, however the rows are split. `weight_sum`: this rank's W when the credit
    is not known before the forward pass (TRL's on-policy weights: each prompt's sum to 1 over its positives,
    so W counts the prompts with a positive)."""
    local_w = float(credit[positive].sum()) if weight_sum is None else weight_sum
    rows, tokens, positive_tokens, w = dist.sum_values(
        [mask.shape[0], float(mask.sum()), float(mask[positive].sum()), local_w])
    return BatchTotals(sequences=int(rows), tokens=int(tokens), positive_tokens=int(positive_tokens), weight_sum=w,
                       max_length=max_length)


@dataclass
class PolicyArrays:
    """What one micro-batch's forward passes produced, n rows and C completion positions (popo's layout)."""

    logprobs: torch.Tensor  # [n, C] the policy's, with gradient
    entropy: torch.Tensor  # [n, C] the policy's token entropy (with gradient when the loss uses it)
    mask: torch.Tensor  # [n, C] bool: the completion tokens this micro-batch counts
    features: torch.Tensor | None = None  # [n, C, H] the policy's per-token features, with gradient
    target: torch.Tensor | None = None  # [n, H] the EMA target's pooled features, no gradient


def loss_inputs(algorithm: Algorithm, cfg, arrays: PolicyArrays, *, credit: torch.Tensor, positive: torch.Tensor,
                totals: BatchTotals, forwarded_tokens: int, predictor: torch.nn.Module | None = None,
                row_keys: torch.Tensor | None = None, old: torch.Tensor | None = None,
                ref: torch.Tensor | None = None) -> LossInputs:
    """The loss table's inputs for one micro-batch.

    `credit` / `positive` [n]; `totals`: the batch's counts over all micro-batches and processes;
    `forwarded_tokens`: the completion tokens forwarded in the whole batch, of which this micro-batch holds
    `token_share`; `predictor`: q, applied to the policy's features pooled over the mask (needed with a
    target); `row_keys` [n] int64: each row's noise seed (`popo.seeds`), so the target noise is the same
    however rows are split; `old` / `ref` [n, >= C]: log-probs before the update and of the reference."""
    width = arrays.mask.shape[1]
    inputs = LossInputs(
        logprobs=arrays.logprobs, mask=arrays.mask, credit=credit, positive=positive, totals=totals,
        token_share=float(arrays.mask.sum()) / max(1, forwarded_tokens),
        entropy=arrays.entropy if algorithm.needs_entropy(cfg) else None,
        old_logprobs=None if old is None else old[:, :width], ref_logprobs=None if ref is None else ref[:, :width])
    if arrays.target is not None:
        pooled = masked_mean(arrays.features, arrays.mask)
        inputs.predicted = predictor(pooled.to(next(predictor.parameters()).dtype))
        if row_keys is not None:
            inputs.target_noise = normal_noise(row_keys, arrays.features.shape[-1]).to(arrays.target.device)
        inputs.target = arrays.target
    return inputs


def loss_and_shares(algorithm: Algorithm, cfg, inputs: LossInputs, entropy: torch.Tensor,
                    forwarded_tokens: int) -> tuple[torch.Tensor, Shares]:
    """One micro-batch's loss (its share of the batch loss, with gradient) and its metrics: the loss table's
    `Shares` plus `entropy`, the policy's token-mean entropy over every forwarded token (this micro-batch's
    share of it), and `nonfinite_losses` 1 when the loss is not finite."""
    loss, shares = algorithm.loss(inputs, cfg)
    shares.put("entropy", float(torch.where(inputs.mask, entropy.detach(), 0.0).sum() / max(1, forwarded_tokens)))
    if not math.isfinite(float(loss.detach())):  # the tensor itself, whatever the metrics say: the step skips
        shares.put("nonfinite_losses", 1.0)
    return loss, shares


def metrics_finite(metrics: dict[str, float]) -> bool:
    """Whether a window's metrics (summed over micro-batches and processes) allow an optimizer step: every value
    finite and no micro-batch with a non-finite loss."""
    return all(math.isfinite(v) for v in metrics.values()) and not metrics.get("nonfinite_losses")


def clip_and_step(params: list[torch.nn.Parameter], optimizers: Iterable[torch.optim.Optimizer], *, max_norm: float,
                  clip: Callable[[list, float], torch.Tensor], finite: bool = True) -> tuple[torch.Tensor, bool]:
    """Clip the gradients of `params` (the policy's and the predictor's, together) to `max_norm` with the
    framework's `clip(params, max_norm)` (`max_norm` <= 0: no clipping, the norm only), then step every
    optimizer when the norm is finite and so is everything else (`finite`); otherwise drop every gradient of
    `params`, so no optimizer moves them. Returns (the norm before clipping, whether it stepped)."""
    norm = clip(params, max_norm if max_norm > 0 else float("inf"))
    stepped = finite and bool(torch.isfinite(norm))
    if stepped:
        for optimizer in optimizers:
            optimizer.step()
    else:
        for p in params:
            p.grad = None
    return norm, stepped
