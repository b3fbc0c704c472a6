"""The `algo.*` settings: each registered loss's typed settings, and `AlgoConfig`, the section that holds them all.

Each loss declares what it reads as a dataclass (`POPOSettings`, `GRPOSettings`, `ReinforceSettings`) with
its types, defaults, rules (`Literal` choices, `popo.field_rules.ranged` ranges) and help text, written once.
`AlgoConfig` is their union, so that `algo.alpha=0.3` stays one flat key and a YAML file reads the same for
every algorithm; it is a subclass of each, so a loss-table entry typed on its own settings accepts it. The
loss table (`popo.algorithms.Algorithm.settings`) names each loss's class; validation, the configuration
reference, TRL's `POPOConfig` fields and verl's ``algorithm.popo`` block are generated from these classes.

A module of its own, below both `popo.config` (which gathers every section) and `popo.algorithms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from popo.credit import WEIGHT_MODES
from popo.ema import EMA_SCHEDULES
from popo.field_rules import ranged
from popo.losses import AGGREGATIONS, KL_ESTIMATORS

TauSchedule = Literal[EMA_SCHEDULES]
WeightMode = Literal[WEIGHT_MODES]
EntropyScope = Literal["positives", "all"]
KLEstimator = Literal[KL_ESTIMATORS]
Aggregation = Literal[AGGREGATIONS]


@dataclass
class OutcomeSettings:
    """How a reward becomes an outcome: read by every loss whose credit separates positives from negatives."""

    reward_threshold: float = 0.0
    """A rollout is positive when its reward is above this."""


@dataclass
class POPOSettings(OutcomeSettings):
    """POPO's settings (docs/algorithm.md): its loss terms, the EMA target and predictor, the positives' weights."""

    alpha: float = ranged(0.1, low=0.0)
    """Weight of the similarity term L_sim."""
    beta: float = ranged(0.01, low=0.0)
    """Weight of the entropy term L_ent."""
    tau: float = ranged(0.995, low=0.0, high=1.0)
    """EMA coefficient of the target model (1 = frozen target, 0 = copy of the policy)."""
    tau_schedule: TauSchedule = "constant"
    """EMA schedule (cosine: tau rises to 1 at the last step)."""
    noise_std: float = ranged(0.02, low=0.0)
    """Std of the Gaussian noise added to the target features."""
    predictor_width: int = ranged(0, low=0)
    """Predictor hidden width (0 = the model's hidden size)."""
    predictor_layers: int = ranged(2, low=1)
    """Predictor depth in Linear layers."""
    weight_mode: WeightMode = "softmax"
    """Positive weights: softmax (over mean log-probs) or uniform."""
    weight_temperature: float = ranged(1.0, low=0.0, open_low=True)
    """Temperature of the weight softmax."""
    length_normalize: bool = False
    """Divide each weight by its completion length and renormalise."""
    entropy_scope: EntropyScope = "positives"
    """Entropy over positives (no compute on negatives) or all (forwards the negatives too)."""


@dataclass
class SurrogateSettings:
    """The clipped surrogate's settings, shared by every loss built on it (GRPO, REINFORCE)."""

    clip_low: float = ranged(0.2, low=0.0)
    """Lower clip range epsilon."""
    clip_high: float = ranged(0.2, low=0.0)
    """Upper clip range epsilon."""
    kl_coef: float = ranged(0.0, low=0.0)
    """KL penalty coefficient to the reference model (0 = no reference model is loaded)."""
    kl_estimator: KLEstimator = "k3"
    """KL estimator (k1, k2, k3 in Schulman's notation)."""
    aggregation: Aggregation = "seq-mean-token-mean"
    """How token losses are aggregated: sequence means of token means, one token mean over the batch, or
    sequence means of token sums over a fixed length (Dr.GRPO)."""
    updates_per_batch: int = ranged(1, low=1)
    """Optimizer updates per rollout batch (old log-probs are computed once when above 1)."""


@dataclass
class GRPOSettings(SurrogateSettings):
    """GRPO's settings: the surrogate on group-normalised advantages."""

    scale_by_std: bool = True
    """Divide advantages by the group std (False = Dr.GRPO)."""


@dataclass
class ReinforceSettings(SurrogateSettings, OutcomeSettings):
    """Signed REINFORCE's settings (NSR, W-REINFORCE): the surrogate on +lambda / -1 credit."""

    positive_weight: float = ranged(1.0, low=0.0)
    """Advantage of a correct rollout (incorrect ones get -1); 0 = NSR, 0.1 = W-REINFORCE."""


@dataclass
class Selection:
    """Which entry of the loss table runs, and the reward rule every algorithm shares."""

    name: str = "popo"
    """Algorithm or preset: a name in the loss table (`popo.algorithms.PRESETS`)."""
    zero_if_truncated: bool = True
    """Rollouts cut off by the token limit get reward 0."""


@dataclass
class AlgoConfig(GRPOSettings, ReinforceSettings, POPOSettings, Selection):
    """The `algo` section: the algorithm's name and every registered loss's settings, as flat keys."""
