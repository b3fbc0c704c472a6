"""The `algo.*` settings: which loss the loss table runs and its coefficients.

A module of its own, below both `popo.config` (which gathers every section) and `popo.algorithms` (whose
loss-table entries read these settings), so the table is typed without importing the whole configuration.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AlgoConfig:
    name: str = "popo"
    """Algorithm or preset: popo, grpo, raft, popo-frozen, popo-nosim, popo-noent, popo-uniform, dr-grpo, grpo-kl,
    nsr, w-reinforce."""
    reward_threshold: float = 0.0
    """A rollout is positive when its reward is above this."""
    zero_if_truncated: bool = True
    """Rollouts cut off by the token limit get reward 0."""
    alpha: float = 0.1
    """POPO: weight of the similarity term L_sim."""
    beta: float = 0.01
    """POPO: weight of the entropy term L_ent."""
    tau: float = 0.995
    """POPO: EMA coefficient of the target model (1 = frozen target, 0 = copy of the policy)."""
    tau_schedule: str = "constant"
    """POPO: EMA schedule, constant or cosine (tau rises to 1 at the last step)."""
    noise_std: float = 0.02
    """POPO: std of the Gaussian noise added to the target features."""
    predictor_width: int = 0
    """POPO: predictor hidden width (0 = the model's hidden size)."""
    predictor_layers: int = 2
    """POPO: predictor depth in Linear layers."""
    weight_mode: str = "softmax"
    """POPO: positive weights, softmax (over mean log-probs) or uniform."""
    weight_temperature: float = 1.0
    """POPO: temperature of the weight softmax."""
    length_normalize: bool = False
    """POPO: divide each weight by its completion length and renormalise."""
    entropy_scope: str = "positives"
    """POPO: entropy over positives (no compute on negatives) or all (forwards the negatives too)."""
    clip_low: float = 0.2
    """GRPO: lower clip range epsilon."""
    clip_high: float = 0.2
    """GRPO: upper clip range epsilon."""
    kl_coef: float = 0.0
    """GRPO: KL penalty coefficient to the reference model (0 = no reference model is loaded)."""
    kl_estimator: str = "k3"
    """GRPO: KL estimator, k1, k2 or k3."""
    aggregation: str = "seq-mean-token-mean"
    """GRPO: loss aggregation, seq-mean-token-mean, token-mean or seq-mean-token-sum-norm."""
    scale_by_std: bool = True
    """GRPO: divide advantages by the group std (False = Dr.GRPO)."""
    updates_per_batch: int = 1
    """GRPO: optimizer updates per rollout batch (old log-probs are computed once when above 1)."""
    positive_weight: float = 1.0
    """nsr/w-reinforce: advantage of a correct rollout (incorrect ones get -1); 0 = NSR, 0.1 = W-REINFORCE."""
