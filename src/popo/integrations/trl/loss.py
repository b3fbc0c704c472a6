"""One POPO micro-batch inside TRL: the forward passes popo's loss table asks for, and the loss.

The forward runs on the unwrapped policy through popo's `Models` (the same calls popo's own update
makes), so under DDP no gradient is synchronised by the wrapper; `POPOTrainer` sums the gradients over
processes itself at the end of the accumulation window, as popo's trainer does. The loss is the
micro-batch's share of the generation batch's loss (normalisers are global), so TRL only has to add up
the backward passes.
"""

from __future__ import annotations

import torch

from popo.algorithms import Algorithm, Shares
from popo.integrations.trl.batches import MicroBatch
from popo.logprobs import masked_mean
from popo.models import Models
from popo.update import micro_batch_loss as update_micro_batch_loss


def micro_batch_loss(models: Models, algorithm: Algorithm, cfg, batch: MicroBatch) -> tuple[torch.Tensor, Shares]:
    """The loss of `batch` (with gradient) and its metrics (`Shares`, added up over the window); a batch
    without rows gives an exact zero and no metrics."""
    rows = batch.rows
    if rows.num_rollouts == 0:  # nothing to forward; the gradient sum still counts this process (as zeros)
        return torch.zeros((), device=models.device, requires_grad=True), Shares()
    mask = rows.completion_mask
    # with no precomputed credit, the weights come from this forward's own log-probs (on-policy: the sampler's)
    return update_micro_batch_loss(
        models, algorithm, cfg, rows, batch.credit, batch.positive, batch.totals, row_seeds=batch.row_seeds,
        forwarded_tokens=batch.forwarded_tokens,
        credit_from=lambda out: batch.credit_from(masked_mean(out.logprobs.detach(), mask), algorithm, cfg))
