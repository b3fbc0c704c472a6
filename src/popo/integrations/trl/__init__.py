"""POPO inside TRL: `POPOConfig` and `POPOTrainer`, drop-in replacements for `GRPOConfig` and `GRPOTrainer`.

    from popo.integrations.trl import POPOConfig, POPOTrainer
    trainer = POPOTrainer(model=..., reward_funcs=..., args=POPOConfig(..., loss_type="popo"), train_dataset=...)

Needs TRL (`pip install 'popo[trl]'`); `import popo` never imports it. The integration relies on
GRPOTrainer's internal methods, so it is tested against one TRL release line (`TESTED_TRL`); another
version gets a warning. Launcher: `accelerate launch -m popo.integrations.trl --config recipe.yaml`.
See docs/integrations.md.
"""

from __future__ import annotations

import warnings

from packaging.specifiers import SpecifierSet

TESTED_TRL = ">=1.16.0,<1.17"  # keep in step with the `trl` extra in pyproject.toml

try:
    import trl
except ImportError:
    raise ImportError("popo.integrations.trl needs TRL, which is not installed: pip install 'popo[trl]' "
                      f"(tested with trl{TESTED_TRL})") from None
if trl.__version__ not in SpecifierSet(TESTED_TRL):
    warnings.warn(f"popo.integrations.trl is tested with trl{TESTED_TRL}, found trl {trl.__version__}: it "
                  "overrides GRPOTrainer internals that may have changed", RuntimeWarning, stacklevel=2)

from popo.integrations.trl.config import POPOConfig  # noqa: E402  (after the TRL check)
from popo.integrations.trl.trainer import POPOTrainer  # noqa: E402

__all__ = ["POPOConfig", "POPOTrainer", "TESTED_TRL"]
