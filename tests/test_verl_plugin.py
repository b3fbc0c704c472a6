"""popo.integrations.verl.plugin: explicit, idempotent registration and POPO's settings for verl."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

pytest.importorskip("verl", reason="verl runs in its own environment: the second part of `make test` (.verl/)")

from popo.algo_config import AlgoConfig  # noqa: E402
from popo.config_reference import field_docs  # noqa: E402
from popo.errors import ConfigError  # noqa: E402
from popo.integrations.verl.plugin import POPOVerlConfig, register  # noqa: E402


def test_register_is_idempotent_and_fills_both_registries():
    from verl.trainer.ppo import core_algos

    from popo.integrations.verl.advantage import popo_advantage
    from popo.integrations.verl.loss import popo_policy_loss

    register()
    register()
    assert core_algos.get_adv_estimator_fn("popo") is popo_advantage
    assert core_algos.get_policy_loss_fn("popo") is popo_policy_loss


def test_register_refuses_a_name_held_by_another_function(monkeypatch):
    from verl.trainer.ppo import core_algos

    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "popo", lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):
        register()


def test_importing_registers_nothing_and_imports_no_verl():
    code = ("import sys, popo, popo.integrations.verl, popo.integrations.verl.plugin, "
            "popo.integrations.verl.advantage, popo.integrations.verl.loss\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('verl', 'ray')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_defaults_and_help_are_popos():
    defaults, docs = AlgoConfig(), field_docs(AlgoConfig)
    for f in dataclasses.fields(POPOVerlConfig):
        assert getattr(POPOVerlConfig(), f.name) == getattr(defaults, f.name), f.name
        assert f.metadata["help"].startswith(docs[f.name]) and docs[f.name], f.name  # (then its rule in words)
    assert POPOVerlConfig(alpha=0.3).algo() == AlgoConfig(name="popo", alpha=0.3)


def test_settings_from_verls_algorithm_section():
    from omegaconf import OmegaConf

    algorithm = OmegaConf.create({"adv_estimator": "popo", "popo": {"weight_mode": "uniform", "beta": 0.0}})
    assert POPOVerlConfig.from_verl_algorithm(algorithm) == POPOVerlConfig(weight_mode="uniform", beta=0.0)
    assert POPOVerlConfig.from_verl_algorithm(OmegaConf.create({"gamma": 1.0})) == POPOVerlConfig()
    assert POPOVerlConfig.from_verl_algorithm(None) == POPOVerlConfig()
    with pytest.raises(ValueError, match=r"unknown key.*did you mean .weight_temperature.\?"):
        POPOVerlConfig.from_mapping({"weight_temprature": 1.0})


def test_invalid_settings_are_rejected():
    with pytest.raises(ConfigError):
        POPOVerlConfig(weight_mode="argmax")
    with pytest.raises(ValueError, match="positives only"):
        POPOVerlConfig(entropy_scope="all")


@pytest.mark.parametrize("policy, registered", [("auto", True), ("none", False)])
def test_importing_verl_loads_the_entry_point_in_a_fresh_process(policy, registered):
    """The `verl.plugins` entry point registers POPO in any process that imports verl (how Ray workers get
    it), and verl's own switch turns it off."""
    code = ("import sys, verl\nfrom verl.trainer.ppo import core_algos\n"
            "print('popo' in core_algos.POLICY_LOSS_REGISTRY, 'popo.integrations.verl.autoload' in sys.modules)")
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": policy}
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(registered), str(registered)]


def test_verl_has_every_private_name_and_the_engine_reaches_them_only_through_internals():
    """`internals.PRIVATE_NAMES` is complete: the installed verl has each, and the engine module itself touches
    no private name of verl's engine classes (its own `self._...` attributes collide with none of verl's)."""
    import inspect
    import re

    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from popo.integrations.verl import engine, internals

    assert internals.missing_private_names() == []
    verl_names = set()
    for klass in FSDPEngineWithLMHead.__mro__:
        if klass.__module__.startswith("verl."):
            verl_names |= {name for name in vars(klass) if name.startswith("_") and not name.startswith("__")}
            verl_names |= set(re.findall(r"\bself\.(_[A-Za-z]\w*)", inspect.getsource(klass)))
    used = set(re.findall(r"\.(_[A-Za-z]\w*)", inspect.getsource(engine)))
    assert not used & verl_names, sorted(used & verl_names)
    assert {name for _, name in internals.PRIVATE_NAMES} <= verl_names | {"_engines"}


def test_the_required_verl_settings_are_values_stated_once():
    """`RULES` is the one statement: `verl_settings` gives values (beta is the run's own), and the engine's check
    reads the same table."""
    from popo.integrations.verl.settings import CHECKED_BY_ENGINE, RULES, VERL_SETTINGS, verl_settings

    key = "actor_rollout_ref.actor.entropy_coeff"
    assert VERL_SETTINGS[key] == AlgoConfig().beta and verl_settings(AlgoConfig(beta=0.3))[key] == 0.3
    assert set(VERL_SETTINGS) == set(RULES) and all(f"actor_rollout_ref.actor.{k}" in RULES for k in CHECKED_BY_ENGINE)
    assert not any(isinstance(v, str) and "POPOVerlConfig" in v for v in VERL_SETTINGS.values())
