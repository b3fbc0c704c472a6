"""One POPO micro-batch inside TRL: the forward passes popo's loss table asks for, and the loss.

The forward runs on the unwrapped policy through popo's `Models` (the same calls popo's own update
makes), so under DDP no gradient is synchronised by the wrapper; `POPOTrainer` sums the gradients over
processes itself at the end of the accumulation window, as popo's trainer does. The loss is the
micro-batch's share of the generation batch's loss (normalisers are global), so TRL only has to add up
the backward passes.
"""

from __future__ import annotations

import torch

from popo.algorithms import ADDITIVE_METRICS, Algorithm, LossInputs
from popo.integrations.trl.batches import MicroBatch
from popo.logprobs import masked_mean
from popo.models import Models
from popo.seeds import normal_noise


def micro_batch_loss(models: Models, algorithm: Algorithm, cfg, batch: MicroBatch) -> tuple[torch.Tensor, dict]:
    """The loss of `batch` (with gradient) and its metrics; a batch without rows gives an exact zero."""
    rows = batch.rows
    if rows.num_rollouts == 0:  # nothing to forward; the gradient sum still counts this process (as zeros)
        return torch.zeros((), device=models.device, requires_grad=True), {}
    ids, attention, prompt_len = rows.sequences()
    mask = rows.completion_mask
    target = None
    if models.target is not None:  # before the policy's forward: a LoRA target swaps adapter tensors
        target = models.target_features(ids, attention, prompt_len, mask)
    entropy_in_loss = algorithm.needs_entropy(cfg)
    out = models.online_outputs(ids, attention, prompt_len, entropy_grad=entropy_in_loss)
    credit = batch.credit
    if credit is None:  # weights from this forward's own log-probs (on-policy: the sampling policy's)
        credit = batch.credit_from(masked_mean(out.logprobs.detach(), mask), algorithm, cfg)
    inputs = LossInputs(logprobs=out.logprobs, mask=mask, credit=credit, positive=batch.positive,
                        totals=batch.totals, entropy=out.entropy if entropy_in_loss else None)
    if target is not None:
        inputs.predicted = models.predict(out.features, mask)
        inputs.target = target
        inputs.target_noise = normal_noise(batch.row_seeds, out.features.shape[-1])
    loss, metrics = algorithm.loss(inputs, cfg)
    # the forwarded rows' token-mean entropy, as this micro-batch's share of the batch's
    metrics["entropy"] = float(torch.where(mask, out.entropy.detach(), 0.0).sum() / max(1, batch.forwarded_tokens))
    metrics["share"] = float(mask.sum()) / max(1, batch.forwarded_tokens)
    return loss, metrics


def accumulate(total: dict[str, float], metrics: dict[str, float]) -> None:
    """Add a micro-batch's metrics to the window's: shares of a batch quantity add up, the others are
    weighted by the micro-batch's share of the forwarded tokens."""
    share = metrics.get("share", 0.0)
    for key, value in metrics.items():
        total[key] = total.get(key, 0.0) + (value if key in ADDITIVE_METRICS or key == "share" else share * value)
