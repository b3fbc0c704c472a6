"""Each loss's settings are one typed dataclass: the `algo` section is exactly their union, presets are
checked against them, their rules (choices, ranges) are stated once and enforced everywhere, and the
configuration reference and the integrations' fields are generated from them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import pytest

import popo.algorithms as algorithms
from popo.algo_config import AlgoConfig, OutcomeSettings, POPOSettings, Selection
from popo.algorithms import LOSSES, PRESETS, register_loss, register_preset
from popo.config import load_config
from popo.config_reference import field_docs, loss_settings, reference_markdown
from popo.errors import ConfigError
from popo.field_rules import field_problems, ranged


def names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def test_the_algo_section_is_the_union_of_the_losses_settings():
    declared = set().union(*(names(entry.settings) for entry in LOSSES.values()))
    assert names(AlgoConfig) == declared | names(Selection)  # no key that no loss reads, none missing
    for entry in LOSSES.values():
        assert issubclass(AlgoConfig, entry.settings)
    assert LOSSES["popo"].settings is POPOSettings
    assert "clip_low" not in LOSSES["popo"].setting_names and "alpha" not in LOSSES["grpo"].setting_names


def test_every_preset_sets_only_its_losss_settings():
    for name, (loss, values) in PRESETS.items():
        assert set(values) <= set(LOSSES[loss].setting_names), name


@pytest.mark.parametrize("values, message", [
    ({"clip_low": 0.1}, r"clip_low is not a setting of popo \(POPOSettings\)"),
    ({"weight_mode": "uniformm"}, r"algo.weight_mode='uniformm' is not valid \(did you mean 'uniform'\?\)"),
    ({"alpha": -0.5}, r"algo.alpha must be >= 0, got -0.5"),
    ({"tau": "high"}, r"algo.tau: expected float, got 'high'"),
])
def test_a_preset_is_checked_against_its_losss_settings(monkeypatch, values, message):
    monkeypatch.setattr(algorithms, "PRESETS", dict(algorithms.PRESETS))
    with pytest.raises(ValueError, match=message):
        register_preset("bad-preset", "popo", **values)
    assert "bad-preset" not in algorithms.PRESETS


def test_a_loss_whose_settings_the_algo_section_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(algorithms, "LOSSES", dict(algorithms.LOSSES))
    monkeypatch.setattr(algorithms, "PRESETS", dict(algorithms.PRESETS))

    @dataclass
    class Mine:
        gamma: float = 1.0

    with pytest.raises(ValueError, match="not one of the settings classes"):
        register_loss("mine", credit=lambda *args: None, settings=Mine)(lambda x, cfg: None)
    assert "mine" not in algorithms.LOSSES


@dataclass
class Fixture:
    mode: Literal["a", "b"] = "a"
    rate: float = ranged(0.5, low=0.0, open_low=True)
    share: float = ranged(0.5, low=0.0, high=1.0)
    count: int = ranged(1, low=1)
    flag: bool = True


@pytest.mark.parametrize("values, problems", [
    ({}, []),
    ({"mode": "c"}, ["x.mode='c' is not valid (valid: a, b)"]),
    ({"rate": 0.0}, ["x.rate must be > 0, got 0.0"]),
    ({"share": 1.0, "rate": 1e-9}, []),  # both ends of a closed range, just above an open one
    ({"share": 1.5, "count": 0}, ["x.share must be in [0, 1], got 1.5", "x.count must be >= 1, got 0"]),
    ({"share": float("nan")}, ["x.share must be in [0, 1], got nan"]),
    ({"count": True}, ["x.count: expected int, got True"]),  # a bool is not a count
    ({"flag": 1}, ["x.flag: expected bool, got 1"]),
    ({"rate": 2}, []),  # an int is a float
])
def test_field_rules(values, problems):
    assert field_problems(Fixture(**values), "x.") == problems


def test_rules_hold_on_the_command_line_and_in_the_integrations_fields():
    with pytest.raises(ConfigError, match=r"^algo.entropy_scope='positive' is not valid \(did you mean 'positives'"):
        load_config(None, ["algo.entropy_scope=positive"])
    with pytest.raises(ConfigError, match=r"^optim.schedule='step' is not valid \(valid: constant, cosine\)"):
        load_config(None, ["optim.schedule=step"])
    assert load_config(None, ["rollout.hf_decode=generate-static"]).rollout.hf_decode == "generate-static"
    generated = loss_settings("popo", name="Generated", prefix="p_")
    docs = field_docs(POPOSettings)
    for f, g in zip(fields(POPOSettings), fields(generated), strict=True):
        assert g.name == "p_" + f.name and g.default == f.default and g.metadata["help"].startswith(docs[f.name])
        assert set(g.metadata) == {"help"}  # what TRL's argument parser accepts
    tau = next(g for g in fields(generated) if g.name == "p_tau")
    assert tau.metadata["help"].endswith("Must be in [0, 1].")  # the rule in words


def test_the_reference_states_each_rule_and_reader():
    rows = {line.split("|")[1].strip(" `"): line for line in reference_markdown().splitlines()[2:]}
    assert "Must be in [0, 1]. Read by popo." in rows["algo.tau"]
    assert "One of k1, k2, k3. Read by grpo, reinforce." in rows["algo.kl_estimator"]
    assert "Read by popo, reinforce." in rows["algo.reward_threshold"]  # OutcomeSettings: both declare it
    assert all(name in rows["algo.name"] for name in PRESETS)
    assert all(row.startswith("| `") and row.endswith(" |") for row in rows.values())  # each row on one line
    assert issubclass(POPOSettings, OutcomeSettings)
