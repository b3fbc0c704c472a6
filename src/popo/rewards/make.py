"""The reward a configuration describes (`make_verifier`): one built-in verifier, or the weighted sum of
built-ins and user functions (`popo.rewards.composite.CompositeReward`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from popo.config import Config
from popo.data.prepare import is_testbed, testbed_task
from popo.errors import ConfigError
from popo.rewards.base import Verifier


def _testbed_verifier(config: Config) -> Verifier:
    """The verifier of the testbed task that `testbed.task` selects."""
    return testbed_task(config).verifier()


def _math_verifier(config: Config) -> Verifier:
    from popo.rewards.math_verifier import MathVerifier

    return MathVerifier()


# built-in names for `reward.functions` -> the verifier each stands for
BUILTIN_REWARDS: dict[str, Callable[[Config], Verifier]] = {"math": _math_verifier, "testbed": _testbed_verifier}


def _check_builtin_names(names: Sequence[str]) -> None:
    """A ConfigError naming `reward.functions` (and the closest built-in) for a name that is neither a
    built-in nor a `package.module:function`."""
    for name in names:
        if ":" not in name and name not in BUILTIN_REWARDS:
            close = difflib.get_close_matches(name, list(BUILTIN_REWARDS), n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"built-ins: {', '.join(BUILTIN_REWARDS)}; or package.module:function")
            raise ConfigError(f"reward.functions: unknown built-in {name!r} ({hint})")


def make_verifier(config: Config, *, source: str | None = None, columns: Sequence[str] = (),
                  log: Callable[[str], None] = print) -> Verifier:
    """The reward `reward.*` describes: one built-in verifier, or a `popo.rewards.composite.CompositeReward`
    adding up weighted built-ins and user functions. User functions are imported and their signatures
    checked here, in their worker processes, against the dataset's `columns`: a problem is a ConfigError
    naming `reward.functions`. Without `reward.functions`: `testbed` for testbed data (`source`, by
    default `data.source`), else `math`."""
    r = config.reward
    source = config.data.source if source is None else source
    names = r.functions or (("testbed",) if is_testbed(source) else ("math",))
    weights = r.weights or (1.0,) * len(names)
    _check_builtin_names(names)
    if len(names) == 1 and ":" not in names[0] and weights[0] == 1.0:
        return BUILTIN_REWARDS[names[0]](config)
    from popo.rewards.composite import CompositeReward, RewardPart
    from popo.rewards.functions import FunctionPool

    specs, pool = [n for n in names if ":" in n], None
    if specs:
        pool = FunctionPool(specs, columns=columns, num_workers=r.num_workers, timeout_s=r.timeout_s,
                            max_memory_mb=r.max_memory_mb)
        try:
            pool.wait_ready()
        except BaseException:
            pool.close()
            raise
    short = [n.rpartition(":")[2] for n in names]
    parts = [RewardPart(name=s if short.count(s) == 1 else n, weight=w,
                        verifier=None if ":" in n else BUILTIN_REWARDS[n](config),
                        function=specs.index(n) if ":" in n else None) for n, s, w in zip(names, short, weights)]
    return CompositeReward(parts, pool=pool, items_per_call=r.items_per_call, log=log)
