"""configs/verl/qwen2.5-math-7b-popo.sh: its Hydra overrides compose with verl 0.9.1's own trainer config,
switch on POPO's estimator, loss and engine, and carry the settings of popo's own 7B recipe."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl runs in its own environment: the second part of `make test` (.verl/)")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "verl" / "qwen2.5-math-7b-popo.sh"


def recipe_overrides() -> list[str]:
    text = RECIPE.read_text().replace("$DATA", "/data/math").replace("$MODEL", "Qwen/Qwen2.5-Math-7B")
    block = text.split("# BEGIN OVERRIDES")[1].split("# END OVERRIDES")[0]
    lines = block.split("OVERRIDES=(")[1].rsplit(")", 1)[0].splitlines()
    return [word for line in lines for word in shlex.split(line, comments=True)]


@pytest.fixture(scope="module")
def composed():
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="ppo_trainer", overrides=recipe_overrides())


def test_verl_recipe_composes_with_verls_config_and_switches_popo_on(composed):
    from verl.utils.config import omega_conf_to_dataclass

    from popo.integrations.verl.engine import POPOEngineConfig
    from popo.integrations.verl.settings import VERL_SETTINGS, POPOVerlConfig

    overrides = recipe_overrides()
    assert len(overrides) == len(set(o.split("=")[0] for o in overrides)) > 30  # no key set twice
    for key, value in VERL_SETTINGS.items():  # every setting POPO needs, with its value
        node = composed
        for part in key.split("."):
            node = node[part]
        assert node == value, key  # entropy_coeff: POPO's default beta
    actor = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    assert isinstance(actor.fsdp_config, POPOEngineConfig)
    settings = actor.fsdp_config.settings()
    assert (settings.alpha, settings.tau, settings.noise_std, settings.predictor_width) == (0.1, 0.999, 0.01, 4096)
    assert POPOVerlConfig.from_verl_algorithm(composed.algorithm).weight_mode == "uniform"


def test_verl_recipe_matches_popos_own_7b_recipe(composed):
    import yaml

    own = yaml.safe_load((ROOT / "configs" / "qwen2.5-math-7b-popo.yaml").read_text())
    actor = composed.actor_rollout_ref.actor
    assert actor.optim.lr == own["optim"]["lr"] and actor.optim.weight_decay == own["optim"]["weight_decay"]
    assert actor.optim.lr_warmup_steps_ratio == own["optim"]["warmup_ratio"]
    assert actor.entropy_coeff == own["algo"]["beta"]
    assert composed.actor_rollout_ref.rollout.n == own["rollout"]["group_size"]
    assert composed.data.max_response_length == own["rollout"]["max_new_tokens"]
    assert composed.actor_rollout_ref.model.path == own["model"]["name"]
