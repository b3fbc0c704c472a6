"""POPO's weighted NLL as a verl policy loss (``actor.policy_loss.loss_mode=popo``, after `plugin.register()`).

What a policy loss sees in verl 0.9.1 (`verl.workers.utils.losses.ppo_loss`, the engine-level loss, per
micro-batch): keyword arguments ``old_log_prob``, ``log_prob`` (with grad), ``advantages``,
``response_mask`` (all [bs, T], padded), ``loss_agg_mode``, ``config`` (the actor config) and
``rollout_is_weights``. The batch-level normalisers are in ``config.global_batch_info``: ``dp_size``,
``batch_num_tokens`` (the response tokens of the whole mini-batch, summed over data-parallel ranks, counted
by the engine before it splits micro-batches), ``global_batch_size`` and ``loss_scale_factor``. The loss does
not see the entropy, the group ids or any other column of the batch.

The loss, by `popo.losses.popo_loss` (its NLL term)::

    L = dp_size * sum_{i in S+} w_i sum_t -log pi(y_it) m_it / N+

with ``w_i`` the row's credit (the advantage the ``"popo"`` estimator wrote on each of its tokens), S+ the
rows with ``w_i > 0`` and ``N+ = batch_num_tokens``. ``dp_size`` undoes the data-parallel gradient average
(as verl's own ``agg_loss`` does), so the summed gradient is that of POPO's loss on the whole mini-batch.

**N+ is popo's only when the mini-batch holds positives only.** verl counts every row's tokens; popo counts
the positives'. POPO's engine (`engine.POPOFSDPEngine`) forwards only the positives and does not call
this loss; on verl's own engine, rows with zero credit in the batch make the loss smaller by N+ / N. The metric
``actor/popo_zero_credit_token_frac`` (the share of this micro-batch's response tokens in zero-credit rows)
says whether that happened. Without ``batch_num_tokens`` (a single process, no global info) N+ is the
micro-batch's own positive-token count.

The entropy term is not computed here (the loss does not receive the entropy): verl's ``ppo_loss`` subtracts
``entropy_coeff * agg_loss(entropy, response_mask, loss_agg_mode, **global_batch_info)``, which with
``loss_agg_mode="token-mean"``, ``entropy_coeff = beta`` and positives-only batches is exactly POPO's
``beta * L_ent`` (entropy over the positives' tokens divided by N+). The similarity term ``alpha * L_sim``
needs the EMA target's and the predictor's features, which only the engine computes; it is absent here (as if
alpha = 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from popo.losses import popo_loss


def row_credit(advantages: Tensor, response_mask: Tensor) -> Tensor:
    """[bs, T] token-level advantages (each row's weight on its tokens) -> [bs] weights (0 for empty rows)."""
    mask = response_mask.bool()
    total = torch.where(mask, advantages.detach(), 0.0).sum(dim=-1)  # [bs]
    return total / mask.sum(dim=-1).clamp_min(1).to(total.dtype)


def _batch_info(config: Any) -> Mapping[str, Any]:
    if config is None:
        return {}
    info = config.get("global_batch_info", None) if hasattr(config, "get") else None
    return info or {}


def popo_policy_loss(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """verl policy loss ``"popo"``: (this micro-batch's share of POPO's NLL, times dp_size; metrics).

    ``old_log_prob`` is not read (POPO's loss has no importance ratio). Raises ValueError for a
    ``loss_agg_mode`` other than token-mean (POPO's terms are token means over N+) and for rollout
    correction weights (POPO does not reweight its positives' tokens).
    """
    if loss_agg_mode != "token-mean":
        raise ValueError(f"POPO's loss is a token mean over its positives; set actor.loss_agg_mode=token-mean, "
                         f"not {loss_agg_mode!r}")
    if rollout_is_weights is not None:
        raise ValueError("POPO's loss takes no rollout-correction weights; disable algorithm.rollout_correction")
    info = _batch_info(config)
    dp_size = int(info.get("dp_size", 1) or 1)
    n_plus = info.get("batch_num_tokens", None)
    if n_plus is None and dp_size > 1:
        raise ValueError("POPO's loss needs the global token count (batch_num_tokens) when dp_size > 1")
    mask = response_mask.bool()
    weights = row_credit(advantages, mask)  # [bs]
    loss, _ = popo_loss(log_prob, mask, weights, alpha=0.0, beta=0.0, num_positive_tokens=n_plus)
    with torch.no_grad():
        tokens = mask.sum()
        zero_credit = (mask & (weights <= 0).unsqueeze(-1)).sum()
        frac = float(zero_credit) / float(tokens) if int(tokens) > 0 else 0.0
    return loss * dp_size, {"actor/popo_zero_credit_token_frac": frac}
