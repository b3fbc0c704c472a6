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
        assert f.metadata["help"] == docs[f.name] and f.metadata["help"], f.name
    assert POPOVerlConfig(alpha=0.3).algo() == AlgoConfig(name="popo", alpha=0.3)


def test_settings_from_verls_algorithm_section():
    from omegaconf import OmegaConf

    algorithm = OmegaConf.create({"adv_estimator": "popo", "popo": {"weight_mode": "uniform", "beta": 0.0}})
    assert POPOVerlConfig.from_verl_algorithm(algorithm) == POPOVerlConfig(weight_mode="uniform", beta=0.0)
    assert POPOVerlConfig.from_verl_algorithm(OmegaConf.create({"gamma": 1.0})) == POPOVerlConfig()
    assert POPOVerlConfig.from_verl_algorithm(None) == POPOVerlConfig()
    with pytest.raises(ValueError, match="unknown key.*did you mean .weight_temperature.\?"):
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
