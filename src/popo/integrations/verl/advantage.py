"""POPO's credit as a verl advantage estimator (``algorithm.adv_estimator=popo``, after `plugin.register()`).

What verl 0.9.1 passes an estimator registered by name (`verl.trainer.ppo.ray_trainer.compute_advantage`,
the branch for estimators other than GAE and GRPO; the v1 trainer calls the same function):
``token_level_rewards`` [bs, T], ``response_mask`` [bs, T], ``config`` (the ``algorithm`` section), and, when
present in the batch, ``index`` (the group ids, ``non_tensor_batch["uid"]``, an object array) and
``reward_baselines``. It does **not** pass the old log-probs (only the optimal-token-baseline estimators get
``old_log_probs``), although the v1 trainer computes them before the advantages.

So, from stock verl, this estimator can compute

- ``weight_mode="uniform"``: exactly popo's weights (1 / |S+_b| on each positive of group b, 0 elsewhere);
- ``weight_mode="softmax"`` only when the caller passes ``old_log_probs`` (a trainer that adds them to the
  estimator's arguments, e.g. a subclass of the trainer's ``_compute_advantage``): the softmax is over each
  group's positives of the rollouts' mean token log-probs, so it needs whole groups and those log-probs
  together, which neither a verl micro-batch (groups split) nor the policy loss (no group ids) has. Without
  them, softmax mode is an error rather than a silent switch to uniform weights.

Rows of a group need not be adjacent (verl may reorder rows to balance data-parallel ranks): groups are
found from ``index``. Groups may differ in size. Each group's weights are `popo.credit.popo_weights`
on that group's rows; the returned advantages and returns are the weight of each row on every one of its
response tokens (0 for negatives and for groups without a positive).

A row's reward is the sum of its token-level rewards (an outcome reward; verl's in-reward KL penalty must be
off, see `plugin.VERL_SETTINGS`); it is positive when above ``reward_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from popo.credit import popo_weights
from popo.logprobs import masked_mean


def _groups(index: Sequence[Any] | None, rows: int) -> list[list[int]]:
    """Row numbers of each group, groups in order of first appearance; no index: one group of all rows."""
    if index is None:
        return [list(range(rows))]
    if len(index) != rows:
        raise ValueError(f"index has {len(index)} entries for {rows} rows")
    members: dict[Any, list[int]] = {}
    for row, uid in enumerate(index):
        members.setdefault(uid, []).append(row)
    return list(members.values())


@torch.no_grad()
def popo_row_weights(
    rewards: Tensor,
    index: Sequence[Any] | None,
    *,
    weight_mode: str,
    weight_temperature: float,
    reward_threshold: float,
    length_normalize: bool,
    mean_logprobs: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """[bs] POPO weights of rows grouped by ``index``: `popo_weights` on each group's rows.

    Groups of equal size are stacked and weighted in one call. ``mean_logprobs`` is required in softmax
    mode (and ignored in uniform mode); ``lengths`` when ``length_normalize``.
    """
    rows = rewards.shape[0]
    if weight_mode == "softmax" and mean_logprobs is None:
        raise ValueError(
            "POPO's softmax weights need each rollout's mean token log-prob, which verl 0.9.1 does not pass "
            "to an advantage estimator; set algorithm.popo.weight_mode=uniform, or pass old_log_probs to the "
            "estimator (see popo.integrations.verl.advantage)")
    scores = mean_logprobs if mean_logprobs is not None else torch.zeros_like(rewards, dtype=torch.float32)
    weights = torch.zeros(rows, dtype=scores.dtype if scores.is_floating_point() else torch.float32,
                          device=rewards.device)
    by_size: dict[int, list[list[int]]] = {}
    for group in _groups(index, rows):
        by_size.setdefault(len(group), []).append(group)
    for size, groups in by_size.items():
        order = torch.tensor([row for group in groups for row in group], dtype=torch.long, device=rewards.device)
        weights[order] = popo_weights(
            scores[order], rewards[order], size, mode=weight_mode, temperature=weight_temperature,
            threshold=reward_threshold, lengths=None if lengths is None else lengths[order],
            length_normalize=length_normalize).to(weights.dtype)
    return weights


@torch.no_grad()
def popo_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[Any] | None = None,
    config: Any = None,
    old_log_probs: Tensor | None = None,
    **unused: Any,
) -> tuple[Tensor, Tensor]:
    """verl advantage estimator ``"popo"``: (advantages, returns), both [bs, T], the row's POPO weight on each
    of its response tokens.

    Args:
        token_level_rewards: [bs, T]; a row's reward is their sum.
        response_mask: [bs, T] response tokens.
        index: [bs] group ids (verl's ``uid``); None treats the batch as one group.
        config: verl's ``algorithm`` section; POPO's settings are read from its ``popo`` key
            (`plugin.POPOVerlConfig.from_verl_algorithm`).
        old_log_probs: [bs, T] log-probs of the policy that sampled; needed for ``weight_mode="softmax"``.
        unused: other arguments verl passes some estimators (``reward_baselines``); POPO reads none of them.
    """
    from popo.integrations.verl.settings import POPOVerlConfig

    settings = POPOVerlConfig.from_verl_algorithm(config)
    mask = response_mask.bool()
    rewards = token_level_rewards.sum(dim=-1)  # [bs]
    mean_lp = None
    if old_log_probs is not None and settings.weight_mode == "softmax":
        mean_lp = masked_mean(old_log_probs.detach(), mask)  # [bs] over each row's response tokens
    weights = popo_row_weights(
        rewards, index, weight_mode=settings.weight_mode, weight_temperature=settings.weight_temperature,
        reward_threshold=settings.reward_threshold, length_normalize=settings.length_normalize,
        mean_logprobs=mean_lp, lengths=mask.sum(dim=-1))
    dtype = token_level_rewards.dtype if token_level_rewards.is_floating_point() else torch.float32
    advantages = weights.to(dtype).unsqueeze(-1) * mask.to(dtype)  # [bs, T]
    return advantages, advantages.clone()
