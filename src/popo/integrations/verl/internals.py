"""Every private verl name popo touches, in one place, checked before anything is registered.

POPO's engine (`engine.POPOFSDPEngine`) subclasses verl's FSDP2 LM-head engine and needs a few of its
internals: building a second module sharded exactly like the policy (the EMA target), FSDP's deferred
gradient sync over micro-batches, the autocast dtype, whether the parameters sit in FSDP2's CPU-offload
policy, and verl's engine table (to see which class holds a key). They are reached only through the
functions below, and `check_verl()` (run by `plugin.register()` and `engine.register_engine()`) refuses,
with one message naming the installed verl, the missing names and `TESTED_VERL`, when any of them is gone,
instead of letting a renamed internal fail somewhere in the middle of a run.

A name is "present" when the class has it as an attribute (methods, class tables) or when a class of its
MRO assigns it as ``self.<name>`` in its source (attributes verl sets in ``__init__``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from popo.errors import SetupError

TESTED_VERL = ">=0.9.1,<0.10"  # keep in step with requirements/verl.txt and docs/integrations.md

ENGINE = "verl.workers.engine.fsdp.transformer_impl:FSDPEngineWithLMHead"
REGISTRY = "verl.workers.engine.base:EngineRegistry"

PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    (ENGINE, "_build_module"),  # the Hugging Face module, as verl builds the policy's (the EMA target's copy)
    (ENGINE, "_build_fsdp_module"),  # sharded like the policy
    (ENGINE, "_gradient_sync_context"),  # FSDP's gradient reduce-scatter deferred to the last micro-batch
    (ENGINE, "_autocast_dtype"),  # the forward's autocast dtype (set by _build_fsdp_module)
    (ENGINE, "_uses_fsdp2_cpu_offload_policy"),  # FSDP2's CPUOffloadPolicy moves the weights itself
    (REGISTRY, "_engines"),  # model type -> backend -> (device, vendor) -> engine class
)
"""(``module:Class``, private name): what popo's engine reads or calls on verl's classes."""


def _owner(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _assigned_in_source(cls: type, name: str) -> bool:
    pattern = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=\n]*)?=[^=]")
    for klass in cls.__mro__:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # builtins, classes without a source file
            continue
        if pattern.search(source):
            return True
    return False


def missing_private_names() -> list[str]:
    """The `PRIVATE_NAMES` the installed verl lacks, as ``Class.name`` (a class or module that does not
    import counts as missing too)."""
    missing = []
    for path, name in PRIVATE_NAMES:
        label = f"{path.partition(':')[2]}.{name}"
        try:
            cls = _owner(path)
        except (ImportError, AttributeError):
            missing.append(label)
            continue
        if not hasattr(cls, name) and not _assigned_in_source(cls, name):
            missing.append(label)
    return missing


def check_verl() -> None:
    """Refuse (SetupError, one line) a verl without every private name popo's engine uses."""
    import verl

    missing = missing_private_names()
    if missing:
        version = getattr(verl, "__version__", "unknown")
        raise SetupError(f"popo's verl plugin cannot run on verl {version}: verl internals it uses are missing "
                         f"({', '.join(missing)}); it is tested with verl{TESTED_VERL}")


# ---------------------------------------------------------------------------------------------- the accessors
def engine_table() -> dict[str, dict[Any, type]]:
    """verl's engine classes for language models: backend -> (device, vendor) or device -> class."""
    return _owner(REGISTRY)._engines.get("language_model", {})


def build_sharded_copy(engine) -> Any:
    """A fresh copy of the engine's model, built and sharded by verl's own code exactly like the policy."""
    return engine._build_fsdp_module(engine._build_module())


def gradient_sync(engine, *, last: bool):
    """The context a micro-batch's backward runs in: FSDP syncs gradients only on the `last` one."""
    return engine._gradient_sync_context(is_last_micro_batch=last)


def autocast_dtype(engine) -> Any:
    """The dtype verl's forward autocasts to (float32: no autocast)."""
    return engine._autocast_dtype


def weights_offloaded_by_fsdp(engine) -> bool:
    """Whether FSDP2's CPUOffloadPolicy moves the parameters itself (no manual offload then)."""
    return bool(engine._uses_fsdp2_cpu_offload_policy)
