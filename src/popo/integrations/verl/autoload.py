"""What verl's plugin loader imports (entry point ``popo`` in the group ``verl.plugins``, pyproject.toml).

verl imports every ``verl.plugins`` entry point at the end of ``import verl``, in the driver and in each Ray
worker, so importing this module is how POPO's estimator, loss and engine reach the processes that look them
up. It is the one module of popo whose import changes something, and nothing in popo imports it.

verl loads plugins inside a ``try`` and logs a failure only at debug level, so a failure here would surface
later as an unknown ``loss_mode``; it is turned into a warning that says why. ``VERL_USE_EXTERNAL_PLUGINS=none``
(verl's switch) keeps this module from loading at all; `popo.integrations.verl.plugin.register()` does the
same work explicitly.
"""

from __future__ import annotations

import warnings


def _register_or_warn() -> None:
    try:
        from popo.integrations.verl.plugin import register

        register()
    except Exception as err:  # verl would swallow it
        warnings.warn(f"popo's verl plugin did not register ({type(err).__name__}: {err}); the estimator and "
                      "loss 'popo' are missing in this process", RuntimeWarning, stacklevel=2)


_register_or_warn()
