"""The one dispatch point: an algorithm's name maps to how it assigns credit to rollouts, which rows it
trains on, which extra model passes it needs, and its loss. The trainer looks everything up here and
never branches on a name.

Presets are configurations only (no loss code of their own): each maps to a base algorithm and a set
of `algo.*` values, which the YAML file and command-line overrides can still change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from popo.losses import aggregate_tokens, grpo_loss, popo_loss
from popo.weights import grpo_advantages, popo_weights, signed_rewards

AlgoSettings = Any
"""The `algo.*` section of the configuration (`popo.config.AlgoConfig`); this floor does not import it."""

# Loss metrics that are shares of a batch-global quantity (losses normalised by global counts, token-weighted
# means whose weights are shares of the global count): summing them over micro-batches and ranks gives the
# value of the whole batch. Every other metric is averaged over micro-batches by forwarded tokens.
ADDITIVE_METRICS = frozenset({"loss", "nll", "sim", "cos_sim", "ent_loss", "pg_loss", "num_positive",
                              "num_positive_tokens", "entropy", "num_tokens", "adv_mean"})


@dataclass
class BatchTotals:
    """Counts over all training rows of one step, so that every micro-batch's loss is normalised
    globally and summing micro-batch losses gives the loss of the whole batch."""

    sequences: int
    tokens: int
    positive_tokens: int
    weight_sum: float
    max_length: int


@dataclass
class LossInputs:
    """What a loss function may read for one micro-batch of n rows with C completion positions."""

    logprobs: torch.Tensor  # [n, C] online policy, with grad
    mask: torch.Tensor  # [n, C] bool completion mask
    credit: torch.Tensor  # [n] POPO weights or GRPO advantages (no grad)
    positive: torch.Tensor  # [n] bool
    totals: BatchTotals
    entropy: torch.Tensor | None = None  # [n, C]
    predicted: torch.Tensor | None = None  # [n, H] predictor(online features)
    target: torch.Tensor | None = None  # [n, H] EMA target features (no grad)
    old_logprobs: torch.Tensor | None = None  # [n, C]
    ref_logprobs: torch.Tensor | None = None  # [n, C]
    generator: torch.Generator | None = None
    target_noise: torch.Tensor | None = None  # [n, H] standard normal per row; else drawn from `generator`


@dataclass(frozen=True)
class Algorithm:
    """What the trainer needs to know about one loss."""

    credit: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, AlgoSettings], torch.Tensor]
    """(rewards [N], sampling mean log-probs [N], lengths [N], group size, config) -> credit [N]."""
    loss: Callable[[LossInputs, AlgoSettings], tuple[torch.Tensor, dict[str, float]]]
    needs_negatives: Callable[[AlgoSettings], bool]
    """Whether negative rollouts go through the forward/backward pass at all."""
    needs_target: Callable[[AlgoSettings], bool]
    """Whether an EMA target model and a predictor are built."""
    needs_reference: Callable[[AlgoSettings], bool]
    """Whether a frozen reference model is loaded."""
    needs_entropy: Callable[[AlgoSettings], bool]
    """Whether the token entropy enters the loss (else it is only logged, without gradient)."""
    needs_old_logprobs: Callable[[AlgoSettings], bool]
    """Whether log-probs before the update must be computed in a separate pass."""
    credit_is_weight: bool = False
    """Whether the credit is a distribution over each prompt's positives (its entropy is logged)."""
    zero_credit_inert: Callable[[AlgoSettings], bool] = lambda cfg: False
    """Whether a row with zero credit has an exactly zero loss gradient, so it need not be forwarded
    (the loss normalisers still count it)."""
    min_group_size: int = 1
    """The smallest `rollout.group_size` the credit assignment is defined for."""
    group_has_signal: Callable[[torch.Tensor, AlgoSettings], torch.Tensor] = (
        lambda rewards, cfg: torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device))
    """(rewards [B, G], config) -> [B] bool: whether a prompt's rollouts can move the policy at all
    (`rollout.dynamic_sampling` keeps only such prompts)."""
    terms: tuple[tuple[str, str | None], ...] = ()
    """The loss's additive terms as (name, the `algo.*` coefficient that scales it): the first has none; zeroing
    a coefficient removes exactly its term (`popo.diagnostics` splits the gradient by term this way)."""


def _popo_credit(rewards, mean_logprobs, lengths, group_size, cfg):
    return popo_weights(mean_logprobs, rewards, group_size, mode=cfg.weight_mode,
                        temperature=cfg.weight_temperature, threshold=cfg.reward_threshold,
                        lengths=lengths, length_normalize=cfg.length_normalize)


def _popo_loss(x: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    on_positives = cfg.entropy_scope == "positives"
    target, noise_std = x.target, cfg.noise_std
    if x.target_noise is not None and target is not None:  # per-row noise, the same however rows are batched
        target, noise_std = target + cfg.noise_std * x.target_noise.to(target.dtype), 0.0
    loss, metrics = popo_loss(
        x.logprobs, x.mask, x.credit, predicted_features=x.predicted, target_features=target,
        token_entropy=x.entropy if on_positives else None, alpha=cfg.alpha,
        beta=cfg.beta if on_positives else 0.0, noise_std=noise_std, generator=x.generator,
        positive_mask=x.positive, num_positive_tokens=x.totals.positive_tokens,
        weight_sum=x.totals.weight_sum)
    if not on_positives and cfg.beta > 0 and x.entropy is not None:
        # entropy_scope=all: -mean entropy over every trained token, negatives included
        ent_loss = -aggregate_tokens(x.entropy, x.mask, "token-mean", num_tokens=x.totals.tokens)
        loss = loss + cfg.beta * ent_loss
        metrics = {**metrics, "ent_loss": float(ent_loss.detach()), "loss": float(loss.detach())}
    return loss, metrics


def _grpo_credit(rewards, mean_logprobs, lengths, group_size, cfg):
    return grpo_advantages(rewards, group_size, scale_by_std=cfg.scale_by_std)


def _grpo_loss(x: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    old = x.old_logprobs if x.old_logprobs is not None else x.logprobs.detach()
    loss, metrics = grpo_loss(
        x.logprobs, old, x.credit, x.mask, ref_logprobs=x.ref_logprobs, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
        aggregation=cfg.aggregation, max_length=x.totals.max_length,
        num_sequences=x.totals.sequences, num_tokens=x.totals.tokens)
    # the mean advantage as this micro-batch's share of the batch mean, so micro-batches add up to it
    metrics["adv_mean"] = float(x.credit.sum()) / max(1, x.totals.sequences)
    return loss, metrics


def _signed_credit(rewards, mean_logprobs, lengths, group_size, cfg):
    return signed_rewards(rewards, positive_weight=cfg.positive_weight, threshold=cfg.reward_threshold)


def _signed_has_signal(rewards, cfg):
    # a negative always has credit -1; a positive has credit only when positive_weight > 0
    negative = (rewards <= cfg.reward_threshold).any(1)
    return negative | (rewards > cfg.reward_threshold).any(1) if cfg.positive_weight > 0 else negative


LOSSES: dict[str, Algorithm] = {
    "popo": Algorithm(
        credit_is_weight=True,
        credit=_popo_credit,
        loss=_popo_loss,
        needs_negatives=lambda cfg: cfg.entropy_scope == "all" and cfg.beta > 0,
        needs_target=lambda cfg: cfg.alpha > 0,
        needs_reference=lambda cfg: False,
        needs_entropy=lambda cfg: cfg.beta > 0,
        needs_old_logprobs=lambda cfg: False,
        group_has_signal=lambda rewards, cfg: (rewards > cfg.reward_threshold).any(1),  # a positive to learn from
        terms=(("nll", None), ("sim", "alpha"), ("ent", "beta")),
    ),
    "grpo": Algorithm(
        credit=_grpo_credit,
        loss=_grpo_loss,
        needs_negatives=lambda cfg: True,
        needs_target=lambda cfg: False,
        needs_reference=lambda cfg: cfg.kl_coef > 0,
        needs_entropy=lambda cfg: False,
        needs_old_logprobs=lambda cfg: cfg.updates_per_batch > 1,
        zero_credit_inert=lambda cfg: cfg.kl_coef == 0,  # -min(rho A, clip(rho) A) is 0 for A = 0
        min_group_size=2,  # advantages compare the rollouts of one prompt
        group_has_signal=lambda rewards, cfg: (rewards != rewards[:, :1]).any(1),  # equal rewards: zero advantages
        terms=(("pg", None), ("kl", "kl_coef")),
    ),
}

# REINFORCE with signed, ungrouped credit (Zhu et al. 2025): GRPO's clipped surrogate with +lambda for correct and
# -1 for incorrect rollouts; with one update per batch the ratio is 1 and its gradient is REINFORCE's. NSR's
# positives (credit 0) are never forwarded (`zero_credit_inert`), and no group comparison is needed.
LOSSES["reinforce"] = dataclasses.replace(LOSSES["grpo"], credit=_signed_credit, min_group_size=1,
                                          group_has_signal=_signed_has_signal)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "popo": ("popo", {}),
    "popo-uniform": ("popo", {"weight_mode": "uniform"}),
    "popo-frozen": ("popo", {"tau": 1.0}),
    "popo-nosim": ("popo", {"alpha": 0.0}),
    "popo-noent": ("popo", {"beta": 0.0}),
    "raft": ("popo", {"weight_mode": "uniform", "alpha": 0.0, "beta": 0.0}),
    "grpo": ("grpo", {}),
    "grpo-kl": ("grpo", {"kl_coef": 0.04}),  # GRPO with the KL penalty to the reference model
    "dr-grpo": ("grpo", {"scale_by_std": False, "aggregation": "seq-mean-token-sum-norm"}),
    "nsr": ("reinforce", {"positive_weight": 0.0}),  # negative sample reinforcement only
    "w-reinforce": ("reinforce", {"positive_weight": 0.1}),  # positives down-weighted by lambda = 0.1
}


def preset_overrides(name: str) -> dict[str, Any]:
    """The `algo.*` values a preset sets (empty for an unknown name; validation reports it)."""
    return dict(PRESETS[name][1]) if name in PRESETS else {}


def get_algorithm(name: str) -> Algorithm:
    """The loss-table entry behind an algorithm or preset name."""
    if name not in PRESETS:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(PRESETS)}")
    return LOSSES[PRESETS[name][0]]
