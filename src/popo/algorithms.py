"""The one dispatch point: an algorithm's name maps to how it assigns credit to rollouts, which rows it
trains on, which extra model passes it needs, and its loss. The trainer looks everything up here and
never branches on a name.

A loss enters the table through `register_loss`, a decorator on a named function of `(LossInputs,
settings)` that also states the algorithm's credit, its needs and its typed settings class (one of the
classes `popo.algo_config.AlgoConfig` is made of; in the spirit of verl's `register_policy_loss`). Its metrics come back as `Shares`: each is the micro-batch's share of the batch's
value, so they add up over micro-batches and processes and no list of names decides how one is averaged.

Presets are configurations only (no loss code of their own): each maps to a registered loss and a set of
its settings' values (checked against that class when registered), which the YAML file and command-line
overrides can still change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import fields, replace
from typing import Any

import torch

from popo.algo_config import AlgoConfig, GRPOSettings, OutcomeSettings, POPOSettings, ReinforceSettings
from popo.field_rules import field_problems
from popo.losses import aggregate_tokens, grpo_loss, popo_loss
from popo.credit import grpo_advantages, popo_weights, signed_rewards


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
    token_share: float = 1.0
    """This micro-batch's share of the batch's forwarded completion tokens: the weight of a mean the loss can
    only take over its own rows (`Shares.of`)."""
    entropy: torch.Tensor | None = None  # [n, C]
    predicted: torch.Tensor | None = None  # [n, H] predictor(online features)
    target: torch.Tensor | None = None  # [n, H] EMA target features (no grad)
    old_logprobs: torch.Tensor | None = None  # [n, C]
    ref_logprobs: torch.Tensor | None = None  # [n, C]
    target_noise: torch.Tensor | None = None  # [n, H] standard normal, each row's from its own key (popo.seeds)


class Shares(dict[str, float]):
    """A micro-batch's loss metrics as its shares of the batch's values, so that `add` over micro-batches
    and a sum over processes give the whole batch's values.

    A loss normalised by the batch's global counts (`BatchTotals`) is already such a share; a mean the loss
    can only take over its own rows (a clip fraction, a token-mean KL) enters weighted by the micro-batch's
    share of the forwarded tokens (`LossInputs.token_share`). Build one with `of`; a key is never set twice.
    """

    @classmethod
    def of(cls, x: LossInputs, shares: dict[str, float], means: dict[str, float] | None = None) -> Shares:
        """`shares` (batch-normalised; must hold `loss`) and the micro-batch `means`, weighted."""
        if "loss" not in shares:
            raise ValueError("a loss-table entry must report its loss as the metric 'loss'")
        out = cls()
        for key, value in shares.items():
            out.put(key, value)
        for key, value in (means or {}).items():
            out.put(key, x.token_share * value)
        return out

    def put(self, key: str, share: float) -> None:
        """Add a new metric (already a share); refused for a key the metrics hold."""
        if key in self:
            raise KeyError(f"metric {key!r} is already set: a loss's metrics are never overwritten")
        self[key] = share

    def add(self, other: Shares) -> None:
        """Add another micro-batch's shares (the accumulation over micro-batches)."""
        if not isinstance(other, Shares):
            raise TypeError(f"loss metrics must be Shares (popo.algorithms.Shares.of), got {type(other).__name__}")
        for key, value in other.items():
            self[key] = self.get(key, 0.0) + value


def _never(cfg: AlgoConfig) -> bool:
    return False


def _always(cfg: AlgoConfig) -> bool:
    return True


def _every_group(rewards: torch.Tensor, cfg: AlgoConfig) -> torch.Tensor:
    return torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)


Credit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, AlgoConfig], torch.Tensor]
Loss = Callable[[LossInputs, AlgoConfig], tuple[torch.Tensor, Shares]]


@dataclass(frozen=True)
class Algorithm:
    """What the trainer needs to know about one loss."""

    name: str
    credit: Credit
    """(rewards [N], sampling mean log-probs [N], lengths [N], group size, config) -> credit [N]."""
    loss: Loss
    """(inputs of one micro-batch, config) -> (its share of the batch loss, with gradient; its `Shares`)."""
    needs_negatives: Callable[[AlgoConfig], bool] = _always
    """Whether negative rollouts go through the forward/backward pass at all."""
    needs_target: Callable[[AlgoConfig], bool] = _never
    """Whether an EMA target model and a predictor are built."""
    needs_reference: Callable[[AlgoConfig], bool] = _never
    """Whether a frozen reference model is loaded."""
    needs_entropy: Callable[[AlgoConfig], bool] = _never
    """Whether the token entropy enters the loss (else it is only logged, without gradient)."""
    needs_old_logprobs: Callable[[AlgoConfig], bool] = _never
    """Whether log-probs before the update must be computed in a separate pass."""
    credit_is_weight: bool = False
    """Whether the credit is a distribution over each prompt's positives (its entropy is logged)."""
    zero_credit_inert: Callable[[AlgoConfig], bool] = _never
    """Whether a row with zero credit has an exactly zero loss gradient, so it need not be forwarded
    (the loss normalisers still count it)."""
    min_group_size: int = 1
    """The smallest `rollout.group_size` the credit assignment is defined for."""
    group_has_signal: Callable[[torch.Tensor, AlgoConfig], torch.Tensor] = _every_group
    """(rewards [B, G], config) -> [B] bool: whether a prompt's rollouts can move the policy at all
    (`rollout.dynamic_sampling` keeps only such prompts)."""
    terms: tuple[tuple[str, str | None], ...] = ()
    """The loss's additive terms as (name, the `algo.*` coefficient that scales it): the first has none; zeroing
    a coefficient removes exactly its term (`popo.diagnostics` splits the gradient by term this way)."""
    settings: type = OutcomeSettings
    """The typed settings this loss and its credit read (a dataclass `AlgoConfig` derives from): its fields
    are the `algo.*` keys the loss reads, the one source of the integrations' settings
    (`popo.config_reference.loss_settings`) and of the reference's "read by" column."""

    @property
    def setting_names(self) -> tuple[str, ...]:
        """The `algo.*` keys this loss reads."""
        return tuple(f.name for f in fields(self.settings))


LOSSES: dict[str, Algorithm] = {}
"""The loss table, filled by `register_loss` (popo's own entries below; a user's loss registers the same way)."""

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}
"""Preset name -> (registered loss, `algo.*` values); every registered loss is also its own preset."""


def register_loss(name: str, *, credit: Credit, **needs: Any) -> Callable[[Loss], Loss]:
    """Decorator: enter the decorated `(LossInputs, settings) -> (loss, Shares)` function in the loss table
    as `name`, with its `credit` assignment and the `Algorithm` fields in `needs`; `algo.name=<name>` then
    selects it. A name is registered once. Its `settings` class must be one `AlgoConfig` is made of (the
    `algo` section holds every key a loss may read)."""
    def enter(loss: Loss) -> Loss:
        if name in LOSSES or name in PRESETS:
            raise ValueError(f"loss {name!r} is already registered")
        settings = needs.get("settings", OutcomeSettings)
        if not (isinstance(settings, type) and issubclass(AlgoConfig, settings)):
            raise ValueError(f"loss {name!r}: settings={settings!r} is not one of the settings classes "
                             "popo.algo_config.AlgoConfig is made of")
        LOSSES[name] = Algorithm(name=name, credit=credit, loss=loss, **needs)
        PRESETS[name] = (name, {})
        return loss
    return enter


def register_preset(name: str, loss: str, **settings: Any) -> None:
    """A preset: the registered `loss` with `settings`, each a field of that loss's settings class with a value
    its type, choices and range allow."""
    if loss not in LOSSES or name in PRESETS:
        raise ValueError(f"preset {name!r}: unknown loss {loss!r} or name already taken")
    declared = LOSSES[loss].settings
    unknown = sorted(set(settings) - {f.name for f in fields(declared)})
    problems = [f"{key} is not a setting of {loss} ({declared.__name__})" for key in unknown]
    problems += field_problems(replace(declared(), **settings), "algo.") if not unknown else []
    if problems:
        raise ValueError(f"preset {name!r}: " + "; ".join(problems))
    PRESETS[name] = (loss, settings)


# ------------------------------------------------------------------------------------------------ POPO

def _popo_credit(rewards, mean_logprobs, lengths, group_size, cfg: POPOSettings) -> torch.Tensor:
    return popo_weights(mean_logprobs, rewards, group_size, mode=cfg.weight_mode,
                        temperature=cfg.weight_temperature, threshold=cfg.reward_threshold,
                        lengths=lengths, length_normalize=cfg.length_normalize)


@register_loss(
    "popo", credit=_popo_credit, credit_is_weight=True,
    needs_negatives=lambda cfg: cfg.entropy_scope == "all" and cfg.beta > 0,
    needs_target=lambda cfg: cfg.alpha > 0,
    needs_entropy=lambda cfg: cfg.beta > 0,
    group_has_signal=lambda rewards, cfg: (rewards > cfg.reward_threshold).any(1),  # a positive to learn from
    terms=(("nll", None), ("sim", "alpha"), ("ent", "beta")), settings=POPOSettings)
def popo_entry(x: LossInputs, cfg: POPOSettings) -> tuple[torch.Tensor, Shares]:
    """`popo_loss` on one micro-batch. Every metric is batch-normalised; the policy's entropy and the weights'
    entropy are logged by the update and the step record, over all forwarded tokens and per prompt."""
    on_positives = cfg.entropy_scope == "positives"
    if x.target is not None and cfg.noise_std > 0 and x.target_noise is None:
        raise ValueError("POPO's target noise is drawn per row from each row's key: pass the rows' noise seeds "
                         "(popo.seeds.noise_seed; `row_seeds` of popo.update) or set algo.noise_std=0")
    loss, metrics = popo_loss(
        x.logprobs, x.mask, x.credit, predicted_features=x.predicted, target_features=x.target,
        token_entropy=x.entropy if on_positives else None, alpha=cfg.alpha,
        beta=cfg.beta if on_positives else 0.0, noise_std=cfg.noise_std, target_noise=x.target_noise,
        positive_mask=x.positive, num_positive_tokens=x.totals.positive_tokens,
        weight_sum=x.totals.weight_sum)
    if not on_positives and cfg.beta > 0 and x.entropy is not None:
        # entropy_scope=all: -mean entropy over every trained token, negatives included
        ent_loss = -aggregate_tokens(x.entropy, x.mask, "token-mean", num_tokens=x.totals.tokens)
        loss = loss + cfg.beta * ent_loss
        metrics = {**metrics, "ent_loss": float(ent_loss.detach()), "loss": float(loss.detach())}
    shares = ("loss", "nll", "sim", "cos_sim", "ent_loss", "num_positive", "num_positive_tokens")
    return loss, Shares.of(x, {k: metrics[k] for k in shares})


# ------------------------------------------------------------------------------------------------ GRPO

def _grpo_credit(rewards, mean_logprobs, lengths, group_size, cfg: GRPOSettings) -> torch.Tensor:
    return grpo_advantages(rewards, group_size, scale_by_std=cfg.scale_by_std)


def _clipped_surrogate(x: LossInputs, cfg: GRPOSettings | ReinforceSettings) -> tuple[torch.Tensor, Shares]:
    """`grpo_loss` on one micro-batch, whatever the credit: the losses are batch-normalised, the KL, clip
    fraction and mean ratio are token means over the micro-batch."""
    old = x.old_logprobs if x.old_logprobs is not None else x.logprobs.detach()
    loss, metrics = grpo_loss(
        x.logprobs, old, x.credit, x.mask, ref_logprobs=x.ref_logprobs, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
        aggregation=cfg.aggregation, max_length=x.totals.max_length,
        num_sequences=x.totals.sequences, num_tokens=x.totals.tokens)
    # the mean credit as this micro-batch's share of the batch mean, so micro-batches add up to it
    shares = {"loss": metrics["loss"], "pg_loss": metrics["pg_loss"], "num_tokens": metrics["num_tokens"],
              "adv_mean": float(x.credit.sum()) / max(1, x.totals.sequences)}
    return loss, Shares.of(x, shares, {k: metrics[k] for k in ("kl", "clip_frac", "ratio_mean")})


_SURROGATE_NEEDS = dict(
    needs_reference=lambda cfg: cfg.kl_coef > 0,
    needs_old_logprobs=lambda cfg: cfg.updates_per_batch > 1,
    zero_credit_inert=lambda cfg: cfg.kl_coef == 0,  # -min(rho A, clip(rho) A) is 0 for A = 0
    terms=(("pg", None), ("kl", "kl_coef")))


@register_loss(
    "grpo", credit=_grpo_credit, **_SURROGATE_NEEDS, settings=GRPOSettings,
    min_group_size=2,  # advantages compare the rollouts of one prompt
    group_has_signal=lambda rewards, cfg: (rewards != rewards[:, :1]).any(1))  # equal rewards: zero advantages
def grpo_entry(x: LossInputs, cfg: GRPOSettings) -> tuple[torch.Tensor, Shares]:
    """GRPO: the clipped surrogate on group-normalised advantages."""
    return _clipped_surrogate(x, cfg)


# ------------------------------------------------------------------------------------------------ REINFORCE

def _signed_credit(rewards, mean_logprobs, lengths, group_size, cfg: ReinforceSettings) -> torch.Tensor:
    return signed_rewards(rewards, positive_weight=cfg.positive_weight, threshold=cfg.reward_threshold)


def _signed_has_signal(rewards: torch.Tensor, cfg: ReinforceSettings) -> torch.Tensor:
    # a negative always has credit -1; a positive has credit only when positive_weight > 0
    negative = (rewards <= cfg.reward_threshold).any(1)
    return negative | (rewards > cfg.reward_threshold).any(1) if cfg.positive_weight > 0 else negative


@register_loss("reinforce", credit=_signed_credit, **_SURROGATE_NEEDS, group_has_signal=_signed_has_signal,
               settings=ReinforceSettings)
def reinforce_entry(x: LossInputs, cfg: ReinforceSettings) -> tuple[torch.Tensor, Shares]:
    """REINFORCE with signed, ungrouped credit (Zhu et al. 2025): GRPO's clipped surrogate with +lambda for
    correct and -1 for incorrect rollouts; with one update per batch the ratio is 1 and its gradient is
    REINFORCE's. NSR's positives (credit 0) are never forwarded (`zero_credit_inert`), and no group
    comparison is needed."""
    return _clipped_surrogate(x, cfg)


register_preset("popo-uniform", "popo", weight_mode="uniform")
register_preset("popo-frozen", "popo", tau=1.0)
register_preset("popo-nosim", "popo", alpha=0.0)
register_preset("popo-noent", "popo", beta=0.0)
register_preset("raft", "popo", weight_mode="uniform", alpha=0.0, beta=0.0)
register_preset("grpo-kl", "grpo", kl_coef=0.04)  # GRPO with the KL penalty to the reference model
register_preset("dr-grpo", "grpo", scale_by_std=False, aggregation="seq-mean-token-sum-norm")
register_preset("nsr", "reinforce", positive_weight=0.0)  # negative sample reinforcement only
register_preset("w-reinforce", "reinforce", positive_weight=0.1)  # positives down-weighted by lambda = 0.1


def preset_overrides(name: str) -> dict[str, Any]:
    """The `algo.*` values a preset sets (empty for an unknown name; validation reports it)."""
    return dict(PRESETS[name][1]) if name in PRESETS else {}


def get_algorithm(name: str) -> Algorithm:
    """The loss-table entry behind an algorithm or preset name."""
    if name not in PRESETS:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(PRESETS)}")
    return LOSSES[PRESETS[name][0]]
