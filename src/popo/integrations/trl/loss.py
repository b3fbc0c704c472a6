"""One POPO micro-batch inside TRL: the forward passes popo's loss table asks for, and the loss.

The forward runs on the unwrapped policy through popo's `Models` (the same calls popo's own update
makes), so under DDP no gradient is synchronised by the wrapper; `POPOTrainer` sums the gradients over
processes itself at the end of the accumulation window, as popo's trainer does. The loss is the
micro-batch's share of the generation batch's loss (normalisers are global), so TRL only has to add up
the backward passes.
"""

from __future__ import annotations

import torch

from popo.algorithms import Algorithm
from popo.integrations.trl.batches import MicroBatch
from popo.logprobs import masked_mean
from popo.models import Models
from popo.update import accumulate_metrics, entropy_share, loss_inputs


def micro_batch_loss(models: Models, algorithm: Algorithm, cfg, batch: MicroBatch) -> tuple[torch.Tensor, dict]:
    """The loss of `batch` (with gradient) and its metrics; a batch without rows gives an exact zero."""
    rows = batch.rows
    if rows.num_rollouts == 0:  # nothing to forward; the gradient sum still counts this process (as zeros)
        return torch.zeros((), device=models.device, requires_grad=True), {}
    mask = rows.completion_mask
    # with no precomputed credit, the weights come from this forward's own log-probs (on-policy: the sampler's)
    inputs, out = loss_inputs(models, algorithm, cfg, rows, batch.credit, batch.positive, batch.totals,
                              row_seeds=batch.row_seeds, credit_from=lambda out: batch.credit_from(
                                  masked_mean(out.logprobs.detach(), mask), algorithm, cfg))
    loss, metrics = algorithm.loss(inputs, cfg)
    metrics["entropy"] = entropy_share(out, mask, batch.forwarded_tokens)
    metrics["share"] = float(mask.sum()) / max(1, batch.forwarded_tokens)
    return loss, metrics


def accumulate(total: dict[str, float], metrics: dict[str, float]) -> None:
    """Add a micro-batch's metrics to the window's: shares of a batch quantity add up, the others are
    weighted by the micro-batch's share of the forwarded tokens."""
    share = metrics.get("share", 0.0)
    accumulate_metrics(total, {k: v for k, v in metrics.items() if k != "share"}, share)
    total["share"] = total.get("share", 0.0) + share
