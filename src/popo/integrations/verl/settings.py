"""POPO's settings for a verl run (`POPOVerlConfig`, the ``algorithm.popo`` section) and the verl settings a
POPO run needs (`RULES`, `verl_settings`, `check_actor_settings`); registration is `popo.integrations.verl.plugin`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from popo.algo_config import AlgoConfig
from popo.config_reference import loss_settings

ESTIMATOR_NAME = "popo"
LOSS_NAME = "popo"

_ACTOR = "actor_rollout_ref.actor."

RULES: dict[str, tuple[Any, str]] = {
    "algorithm.adv_estimator": (ESTIMATOR_NAME, "POPO's credit"),
    "algorithm.use_kl_in_reward": (False, "the estimator reads outcome rewards; a KL penalty would change them"),
    _ACTOR + "policy_loss.loss_mode": (LOSS_NAME, "POPO's engine computes POPO's loss"),
    _ACTOR + "loss_agg_mode": ("token-mean", "POPO's NLL and entropy are token means over N+"),
    _ACTOR + "use_kl_loss": (False, "POPO has no reference model"),
    _ACTOR + "ppo_epochs": (1, "POPO updates once per generation batch"),
    _ACTOR + "entropy_coeff": (lambda algo: algo.beta, "POPO's beta: the engine uses beta, set both alike"),
    _ACTOR + "strategy": ("fsdp2", "POPO's engine subclasses verl's FSDP2 engine"),
    _ACTOR + "fsdp_config._target_": ("popo.integrations.verl.engine.POPOEngineConfig", "POPO's engine"),
}
"""The verl settings a POPO run needs: key -> (value, or a function of POPO's `algo` settings; why). Stated
once: `verl_settings` lists them, `check_actor_settings` refuses the actor's that POPO's engine can read."""

CHECKED_BY_ENGINE = ("policy_loss.loss_mode", "use_kl_loss", "ppo_epochs", "entropy_coeff")
"""The `RULES` under ``actor_rollout_ref.actor.`` in the actor config verl binds to its loss function."""


def verl_settings(algo: AlgoConfig | None = None) -> dict[str, Any]:
    """The verl settings a POPO run with `algo` (default: POPO's defaults) needs, by key."""
    algo = algo or AlgoConfig(name="popo")
    return {key: value(algo) if callable(value) else value for key, (value, _) in RULES.items()}


VERL_SETTINGS = verl_settings()
"""`verl_settings` at POPO's defaults (what the recipe, configs/verl/qwen2.5-math-7b-popo.sh, sets)."""


def check_actor_settings(loss_function, algo: AlgoConfig) -> None:
    """Refuse verl actor settings that contradict POPO's update (`RULES` in `CHECKED_BY_ENGINE`, read from the
    actor config verl binds to its loss function, when there is one): another loss mode, a KL loss, several
    epochs per batch, or an entropy coefficient other than POPO's beta."""
    config = getattr(loss_function, "keywords", {}).get("config") if loss_function is not None else None
    if config is None:
        return
    wanted, problems = verl_settings(algo), []
    for key in CHECKED_BY_ENGINE:
        want, (_, why) = wanted[_ACTOR + key], RULES[_ACTOR + key]
        got = config
        for part in key.split("."):
            got = got.get(part, None) if hasattr(got, "get") else getattr(got, part, None)
        if got is not None and type(want)(got) != want:  # (a setting verl's config lacks is not checked)
            problems.append(f"actor.{key}={got!r} (POPO needs {want!r}: {why})")
    if problems:
        raise ValueError("verl settings incompatible with POPO's engine: " + "; ".join(problems))


@dataclass
class POPOVerlConfig(loss_settings("popo", name="POPOVerlSettings")):
    """POPO's settings for verl, the ``algorithm.popo`` section: the `algo` settings popo's loss-table entry
    declares (`popo.algorithms.Algorithm.settings`), with popo's types, defaults and help text
    (``dataclasses.fields(POPOVerlConfig)[i].metadata``), generated from that one list.

    The estimator reads reward_threshold, weight_mode, weight_temperature and length_normalize; beta is
    verl's ``actor.entropy_coeff``; alpha, tau, tau_schedule, noise_std and the predictor's shape belong to
    the engine that holds the EMA target and the predictor (``actor.fsdp_config.popo``, `engine.POPOEngineConfig`).
    """

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
