"""The verl policy loss ``"popo"``: registered so that verl accepts ``actor.policy_loss.loss_mode=popo``, and
refused wherever verl itself would compute it.

POPO trains in its own actor engine (`engine.POPOFSDPEngine`, switched on by `ENGINE_SETTING`), which never
calls a policy loss: it forwards the positives alone and computes popo's loss-table entry with the EMA
target's and the predictor's features. verl's stock engine (and its legacy actor) would call this function
instead, with only log-probs and advantages for every row: no similarity term, every negative forwarded, and
N+ counted over all rows. Rather than train that weaker objective under POPO's name, the call is an error that
names the engine setting.
"""

from __future__ import annotations

from typing import Any

from popo.errors import ConfigError

ENGINE_SETTING = "actor_rollout_ref.actor.fsdp_config._target_=popo.integrations.verl.engine.POPOEngineConfig"


def popo_policy_loss(*args: Any, **kwargs: Any):
    """verl policy loss ``"popo"``: always a ConfigError (module docstring); POPO's engine does not call it."""
    raise ConfigError(
        "actor.policy_loss.loss_mode=popo runs only in POPO's actor engine, and this is verl's own: set "
        f"{ENGINE_SETTING} (with actor.strategy=fsdp2; POPO's settings under fsdp_config.popo). verl's engine "
        "would train POPO's weighted NLL alone, on every row, without the similarity term")
