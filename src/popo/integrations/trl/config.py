"""`POPOConfig`: TRL's `GRPOConfig` plus POPO's settings.

Every POPO field is `popo_<name>` for the `algo.<name>` key of popo's own configuration
(`popo.algo_config.POPOSettings`), with the same default and help text, so a recipe reads the same in both
trainers. The prefix keeps them apart from TRL's fields of similar names: TRL's `beta` is its KL
coefficient, `popo_beta` is POPO's entropy weight; TRL's `temperature` is the sampling temperature,
`popo_weight_temperature` the temperature of POPO's weight softmax.

`loss_type="popo"` (the default here) selects POPO; any other `loss_type` is passed to TRL's own code
untouched. With POPO, settings that would silently change its meaning are rejected (a KL penalty,
several iterations per generation, TRL's entropy bonus, ...), and vLLM's importance-sampling correction
is turned off: it needs a forward pass over every completion, which POPO exists to avoid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from popo.config import AlgoConfig, Config, validate
from popo.config_reference import loss_settings
from popo.errors import ConfigError

POPO_LOSS_TYPE = "popo"  # the `loss_type` that selects POPO; every other one is TRL's own
PREFIX = "popo_"

# TRL settings POPO does not use, with the value that leaves them off: any other value is an error with
# loss_type="popo" rather than a setting that is silently ignored.
_NEUTRAL = {
    "beta": (0.0, "TRL's KL coefficient: POPO has no reference model; its entropy weight is popo_beta"),
    "num_iterations": (1, "POPO takes one optimizer step per generation batch"),
    "entropy_coef": (0.0, "TRL's entropy bonus; POPO's is popo_beta"),
    "use_adaptive_entropy": (False, "TRL's entropy controller; POPO's entropy weight is popo_beta"),
    "top_entropy_quantile": (1.0, "POPO trains on every token of its positives"),
    "off_policy_mask_threshold": (None, "POPO's loss has no importance ratio to mask"),
}


@dataclass
class POPOConfig(GRPOConfig, loss_settings("popo", name="POPOTRLFields", prefix=PREFIX)):
    """`GRPOConfig` with POPO's fields (`popo_*`, generated from the settings popo's loss-table entry declares,
    see the module docstring) and `loss_type="popo"`."""

    loss_type: str = field(
        default=POPO_LOSS_TYPE,
        metadata={"help": "'popo' trains with POPO (positives only, popo's loss); any of TRL's loss types "
                          "('dapo', 'grpo', 'dr_grpo', ...) runs TRL's GRPOTrainer code unchanged."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type != POPO_LOSS_TYPE:
            return
        algo = self.popo_algo()  # popo's own checks, reported with this class's field names
        try:
            validate(Config(algo=algo))
        except ConfigError as err:
            raise ConfigError(f"POPOConfig: {str(err).replace('algo.', PREFIX)}") from None
        for name, (neutral, why) in _NEUTRAL.items():
            if getattr(self, name) != neutral:
                raise ConfigError(f"POPOConfig: {name}={getattr(self, name)!r} is not supported with "
                                  f"loss_type='popo' ({why}); leave it at {neutral!r}")
        if self.steps_per_generation != self.gradient_accumulation_steps:
            raise ConfigError(
                f"POPOConfig: steps_per_generation={self.steps_per_generation} must equal "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} with loss_type='popo' (one "
                "generation batch per optimizer step: POPO normalises its loss over that batch)")
        rows = self.per_device_train_batch_size * self.steps_per_generation
        if rows % self.num_generations:
            raise ConfigError(
                f"POPOConfig: per_device_train_batch_size x steps_per_generation = {rows} rows per process must "
                f"be a multiple of num_generations={self.num_generations} with loss_type='popo' (a prompt's "
                "completions stay on one process, so its weights see the whole group)")
        self.vllm_importance_sampling_correction = False  # it needs a forward pass over every completion

    def popo_algo(self) -> AlgoConfig:
        """The `popo_*` fields as popo's own `algo` section (what popo's loss table reads)."""
        values = {f.name: getattr(self, PREFIX + f.name) for f in fields(AlgoConfig) if hasattr(self, PREFIX + f.name)}
        return AlgoConfig(name="popo", **values)
