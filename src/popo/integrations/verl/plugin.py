"""`register()`: enter POPO's advantage estimator, policy loss and actor engine into verl's registries, and
`POPOVerlConfig`: POPO's settings for a verl run.

Registration is explicit: importing this module changes nothing in verl. `register()` may be called any
number of times (it enters the same two functions each time). In a verl run with Ray, the loss is looked up
in the worker processes, so `register()` must run in each of them (for example from a module named by
``VERL_USE_EXTERNAL_MODULES`` or loaded through verl's ``verl.plugins`` entry points, which verl imports
in every process that imports verl); calling it only in the driver registers the estimator, not the loss.

POPO's settings travel under ``algorithm.popo`` in verl's (Hydra) configuration, e.g.
``+algorithm.popo.weight_mode=uniform``; the advantage estimator reads them from the ``config`` verl
passes it (`POPOVerlConfig.from_mapping`). verl's own keys that must be set for POPO are listed in
`VERL_SETTINGS`.
"""

from __future__ import annotations

import warnings

from popo.integrations.verl.internals import TESTED_VERL, check_verl
from popo.integrations.verl.settings import ESTIMATOR_NAME, LOSS_NAME, VERL_SETTINGS, POPOVerlConfig

__all__ = ["ESTIMATOR_NAME", "LOSS_NAME", "TESTED_VERL", "VERL_SETTINGS", "POPOVerlConfig", "register"]


def register() -> None:
    """Enter the estimator ``"popo"`` and the policy loss ``"popo"`` into verl's registries (idempotent).

    Refuses (SetupError, before registering anything) a verl that lacks one of the private names popo's engine
    uses (`internals.check_verl`); raises ValueError when another function already holds either name; warns
    on a verl outside `TESTED_VERL` (the engine subclass overrides verl internals that change between
    releases)."""
    import verl
    from packaging.specifiers import SpecifierSet

    check_verl()
    from verl.trainer.ppo import core_algos

    if verl.__version__ not in SpecifierSet(TESTED_VERL):
        warnings.warn(f"popo's verl plugin is tested with verl{TESTED_VERL}, found verl {verl.__version__}: "
                      "it may fail or train differently", RuntimeWarning, stacklevel=2)

    from popo.integrations.verl.advantage import popo_advantage
    from popo.integrations.verl.loss import popo_policy_loss

    held = core_algos.POLICY_LOSS_REGISTRY.get(LOSS_NAME)
    if held is not None and held is not popo_policy_loss:
        raise ValueError(f"verl policy loss {LOSS_NAME!r} is already registered to {held!r}")
    core_algos.register_adv_est(ESTIMATOR_NAME)(popo_advantage)  # itself refuses another function
    core_algos.register_policy_loss(LOSS_NAME)(popo_policy_loss)

    from popo.integrations.verl.engine import register_engine

    register_engine()  # POPO's actor engine; verl's own behaviour unless fsdp_config is a POPOEngineConfig
