"""POPO's settings for a verl run (`POPOVerlConfig`, the ``algorithm.popo`` section) and the verl settings a
POPO run needs (`VERL_SETTINGS`); registration is `popo.integrations.verl.plugin`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from popo.algo_config import AlgoConfig
from popo.config_reference import field_docs

ESTIMATOR_NAME = "popo"
LOSS_NAME = "popo"

VERL_SETTINGS = {
    "algorithm.adv_estimator": ESTIMATOR_NAME,
    "algorithm.use_kl_in_reward": False,  # the estimator reads outcome rewards; a KL penalty would change them
    "actor_rollout_ref.actor.policy_loss.loss_mode": LOSS_NAME,
    "actor_rollout_ref.actor.loss_agg_mode": "token-mean",  # POPO's NLL and entropy are token means over N+
    "actor_rollout_ref.actor.use_kl_loss": False,  # POPO has no reference model
    "actor_rollout_ref.actor.ppo_epochs": 1,  # one update per generation batch
    "actor_rollout_ref.actor.entropy_coeff": "POPOVerlConfig.beta",  # verl adds the entropy term (see loss.py)
    "actor_rollout_ref.actor.strategy": "fsdp2",  # POPO's engine subclasses verl's FSDP2 engine
    "actor_rollout_ref.actor.fsdp_config._target_": "popo.integrations.verl.engine.POPOEngineConfig",
}
"""verl settings a POPO run needs (`loss.popo_policy_loss` rejects the aggregation and rollout correction
it cannot honour; `engine.check_actor_settings` refuses the actor's when POPO's engine trains)."""


def _popo_field(name: str) -> Any:
    """A field with the default and help text of popo's own ``algo.<name>`` (`popo.algo_config.AlgoConfig`)."""
    docs = field_docs(AlgoConfig)
    return field(default=getattr(AlgoConfig(), name), metadata={"help": docs[name]})


@dataclass
class POPOVerlConfig:
    """POPO's settings for verl, the ``algorithm.popo`` section: the fields of popo's ``algo`` section that a
    verl run uses, with popo's defaults and help text (``dataclasses.fields(POPOVerlConfig)[i].metadata``).

    The estimator reads reward_threshold, weight_mode, weight_temperature and length_normalize; beta is
    verl's ``actor.entropy_coeff``; alpha, tau, tau_schedule, noise_std and the predictor's shape belong to
    the engine that holds the EMA target and the predictor (``actor.fsdp_config.popo``, `engine.POPOEngineConfig`).
    """

    alpha: float = _popo_field("alpha")
    beta: float = _popo_field("beta")
    tau: float = _popo_field("tau")
    tau_schedule: str = _popo_field("tau_schedule")
    noise_std: float = _popo_field("noise_std")
    predictor_width: int = _popo_field("predictor_width")
    predictor_layers: int = _popo_field("predictor_layers")
    weight_mode: str = _popo_field("weight_mode")
    weight_temperature: float = _popo_field("weight_temperature")
    length_normalize: bool = _popo_field("length_normalize")
    reward_threshold: float = _popo_field("reward_threshold")
    entropy_scope: str = _popo_field("entropy_scope")

    def __post_init__(self) -> None:
        from popo.config import Config, validate  # popo's own checks on the same values

        validate(Config(algo=self.algo()))
        if self.entropy_scope != "positives":
            raise ValueError("POPOVerlConfig: entropy_scope='all' needs the negatives forwarded; the verl plugin "
                             "trains on positives only (entropy_scope='positives')")

    def algo(self) -> AlgoConfig:
        """These settings as popo's own ``algo`` section (what popo's loss table reads)."""
        return AlgoConfig(name="popo", **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> POPOVerlConfig:
        """Build from ``algorithm.popo`` (a dict or an OmegaConf node; None gives the defaults). An unknown
        key is an error, not a setting silently ignored."""
        if settings is None:
            return cls()
        values = dict(settings.items())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, known, 1))
                     else repr(k) for k in unknown]
            raise ValueError(f"algorithm.popo: unknown key(s) {', '.join(hints)}; valid: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_verl_algorithm(cls, algorithm: Any) -> POPOVerlConfig:
        """The ``popo`` section of verl's ``algorithm`` config (an OmegaConf node, a dict, a verl
        ``AlgoConfig`` dataclass without such a field, or None): defaults where it has none."""
        if algorithm is None:
            return cls()
        section = algorithm.get("popo", None) if hasattr(algorithm, "get") else getattr(algorithm, "popo", None)
        return cls.from_mapping(section)
