"""The credit each rollout gets from its reward: per-sequence weights for POPO, advantages for GRPO,
and signed rewards for REINFORCE (NSR, W-REINFORCE). The loss table (`popo.algorithms`) picks one.

Rows are laid out prompt by prompt: the ``N = B * G`` completions of a batch
are ``B`` consecutive groups of ``G = group_size`` rollouts of one prompt.

POPO weights
------------
For prompt ``b`` let ``S+_b`` be its positive rollouts, those whose reward is
strictly above ``threshold``.  With ``m_i`` the mean token log-probability of
rollout ``i`` under the current policy and temperature ``T_w``::

    softmax:  w_i = exp(m_i / T_w) / sum_{j in S+_b} exp(m_j / T_w)   (i in S+_b)
    uniform:  w_i = 1 / |S+_b|                                        (i in S+_b)
    w_i = 0                                                          (i not in S+_b)

so every prompt with at least one positive gets a probability distribution
over its positives, and negatives get exactly zero.  A prompt with no positive
gets all-zero weights (it contributes nothing to the loss).

With ``length_normalize=True`` each positive weight is further divided by the
rollout's length ``L_i`` and the prompt's weights are renormalised to sum to
one: ``w_i <- (w_i / L_i) / sum_{j in S+_b} (w_j / L_j)``.  Because POPO's
NLL sums token terms, a long positive otherwise gets a larger share of the
gradient than a short one with the same weight; this option divides that
back out.  Lengths below 1 are clamped to 1 (an empty positive cannot make a
weight infinite).

The weights are targets, not functions to differentiate: they are computed
under ``torch.no_grad`` from detached inputs.  Log-probabilities of negatives
never enter the computation (masking uses ``torch.where`` before the softmax),
so they may be ``-inf`` or NaN without effect.  The positives' log-probs are
assumed finite.

GRPO advantages
---------------
``A_i = (r_i - mean_G r) / (std_G r + eps)`` with the unbiased (Bessel,
``G - 1`` denominator) sample standard deviation, matching TRL's
``GRPOTrainer``.  ``scale_by_std=False`` gives ``A_i = r_i - mean_G r`` (the
Dr. GRPO variant, which avoids up-weighting near-uniform groups).  A group
whose rewards are all equal gets zero advantage either way.

Signed REINFORCE credit (NSR, W-REINFORCE)
------------------------------------------
Zhu et al. (2025, arXiv 2506.01347) split the REINFORCE gradient with rewards
``+1`` (correct) and ``-1`` (incorrect) into positive and negative sample
reinforcement and weight the positive part by ``lambda``::

    A_i = lambda   if r_i > threshold
    A_i = -1       otherwise

``lambda = 0`` is NSR (only incorrect rollouts are pushed down) and
``lambda = 0.1`` is W-REINFORCE.  Nothing is centred or scaled by the group,
so the credit of a rollout does not depend on its siblings' rewards.
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHT_MODES = ("softmax", "uniform")


def _check_groups(x: Tensor, group_size: int, name: str) -> int:
    """Validate a flat [N] tensor laid out in groups; return the number of groups B."""
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(x.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if x.numel() % group_size != 0:
        raise ValueError(
            f"{name} has {x.numel()} rows, not divisible by group_size={group_size}"
        )
    return x.numel() // group_size


@torch.no_grad()
def popo_weights(
    mean_logprobs: Tensor,
    rewards: Tensor,
    group_size: int,
    *,
    mode: str = "softmax",
    temperature: float = 1.0,
    threshold: float = 0.0,
    lengths: Tensor | None = None,
    length_normalize: bool = False,
) -> Tensor:
    """POPO's per-rollout weights: a distribution over each prompt's positives.

    Args:
        mean_logprobs: [N] mean token log-prob of each rollout (only positives' values are read).
        rewards: [N] scalar rewards; a rollout is positive when reward > threshold.
        group_size: G, rollouts per prompt; N must be a multiple of G.
        mode: "softmax" (self-normalised by the policy's own likelihood) or "uniform".
        temperature: T_w > 0 dividing the log-probs in softmax mode.
        threshold: reward threshold for "positive".
        lengths: [N] completion lengths, required when length_normalize=True.
        length_normalize: divide positive weights by length and renormalise per prompt.

    Returns:
        [N] weights with requires_grad False: in [0, 1], summing to 1 over each prompt
        that has a positive, exactly 0 for negatives and for prompts without a positive.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; valid modes: {WEIGHT_MODES}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_groups = _check_groups(mean_logprobs, group_size, "mean_logprobs")
    if rewards.shape != mean_logprobs.shape:
        raise ValueError(
            f"rewards shape {tuple(rewards.shape)} != mean_logprobs shape "
            f"{tuple(mean_logprobs.shape)}"
        )
    if length_normalize and lengths is None:
        raise ValueError("length_normalize=True needs lengths[N]")

    dtype = mean_logprobs.dtype if mean_logprobs.is_floating_point() else torch.float32
    # Compute in at least float32 so bf16 inputs do not produce coarse weights.
    work = torch.promote_types(dtype, torch.float32)
    lp = mean_logprobs.detach().to(work).view(num_groups, group_size)  # [B, G]
    pos = (rewards.detach() > threshold).view(num_groups, group_size)  # [B, G]
    has_pos = pos.any(dim=1, keepdim=True)  # [B, 1]

    if mode == "softmax":
        # Negatives become -inf *before* the softmax, so their values never matter.
        z = torch.where(pos, lp / temperature, float("-inf"))  # [B, G]
        # A prompt without positives would be softmax(all -inf) = NaN: give it a dummy
        # finite row, then zero it below.
        z = torch.where(has_pos, z, 0.0)  # [B, G]
        w = torch.softmax(z, dim=1)  # [B, G]
    else:
        count = pos.sum(dim=1, keepdim=True).clamp_min(1).to(work)  # [B, 1]
        w = pos.to(work) / count  # [B, G]
    w = torch.where(pos, w, 0.0)  # [B, G]

    if length_normalize:
        if lengths.shape != mean_logprobs.shape:
            raise ValueError(
                f"lengths shape {tuple(lengths.shape)} != {tuple(mean_logprobs.shape)}"
            )
        lens = lengths.detach().to(work).view(num_groups, group_size).clamp_min(1.0)  # [B, G]
        w = torch.where(pos, w / lens, 0.0)  # [B, G]
        total = w.sum(dim=1, keepdim=True)  # [B, 1]
        w = torch.where(total > 0, w / torch.where(total > 0, total, 1.0), 0.0)  # [B, G]

    return w.reshape(-1).to(dtype)  # [N]


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages ``(r - mean_G r) / (std_G r + eps)``.

    Args:
        rewards: [N] rewards, prompt by prompt in groups of group_size.
        group_size: G >= 2 (the unbiased std needs two samples).
        scale_by_std: divide by the group's unbiased std (+eps); False gives r - mean.
        eps: added to the std.

    Returns:
        [N] advantages (floating dtype of rewards, float32 for integer/bool rewards),
        requires_grad False.
    """
    if group_size < 2:
        raise ValueError(f"grpo_advantages needs group_size >= 2, got {group_size}")
    num_groups = _check_groups(rewards, group_size, "rewards")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.detach().to(dtype).view(num_groups, group_size)  # [B, G]
    centred = r - r.mean(dim=1, keepdim=True)  # [B, G]
    if scale_by_std:
        std = r.std(dim=1, correction=1, keepdim=True)  # [B, 1]
        centred = centred / (std + eps)  # [B, G]
    return centred.reshape(-1)  # [N]


@torch.no_grad()
def signed_rewards(rewards: Tensor, *, positive_weight: float, threshold: float = 0.0) -> Tensor:
    """Signed REINFORCE credit: ``positive_weight`` for rewards above ``threshold``, ``-1`` for the rest.

    Args:
        rewards: [N] rewards (any layout; no groups are used).
        positive_weight: lambda >= 0, the advantage of a correct rollout (0: NSR, 0.1: W-REINFORCE).
        threshold: a rollout is correct when its reward is strictly above it.

    Returns:
        [N] advantages (floating dtype of rewards, float32 for integer/bool rewards), requires_grad False.
    """
    if positive_weight < 0:
        raise ValueError(f"signed_rewards needs positive_weight >= 0, got {positive_weight}")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    credit = torch.full(rewards.shape, -1.0, dtype=dtype, device=rewards.device)  # [N]
    credit[rewards.detach() > threshold] = positive_weight  # in the credit's own dtype, not rounded via float32
    return credit
