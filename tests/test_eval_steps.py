"""`train.eval_steps`: evaluations at exactly the named steps (a study's finals read their test split there and
nowhere else), beside or instead of every `train.eval_every` steps."""

from __future__ import annotations

import pytest

from popo.build import build_trainer
from popo.config import load_config
from popo.errors import ConfigError
from tests.conftest import warm_testbed_config


@pytest.mark.parametrize("every, named, evaluated", [(0, "0,2", [0, 2, 4]), (0, "2", [2, 4]), (3, "1", [0, 1, 3, 4]),
                                                     (0, "", [4])])
def test_evaluations_happen_at_the_named_steps_and_the_last(warm_testbed_cache, tmp_path, one_thread, every, named,
                                                            evaluated):
    config = warm_testbed_config(warm_testbed_cache, tmp_path, "train.steps=4", f"train.eval_every={every}",
                                 f"train.eval_steps={named}", "train.eval_samples=2", "rollout.prompts_per_step=2",
                                 "rollout.group_size=2", "data.eval_size=4")
    records = build_trainer(config, log=lambda m: None).run()
    assert [r["step"] for r in records if "eval/greedy_acc" in r] == evaluated


def test_the_setting_reads_whole_steps_within_the_run():
    assert load_config(None, ["train.steps=2000", "train.eval_steps=1500"]).train.eval_steps == (1500,)
    assert load_config(None, ["train.steps=2000", "train.eval_steps=[0, 1500]"]).train.eval_steps == (0, 1500)
    with pytest.raises(ConfigError, match=r"train.eval_steps must lie in \[0, train.steps=2000\], got \[2500\]"):
        load_config(None, ["train.steps=2000", "train.eval_steps=1500,2500"])
    with pytest.raises(ConfigError, match="train.eval_steps: expected a list of whole numbers"):
        load_config(None, ["train.eval_steps=1.5"])
