"""`testbed.task` picks the generator, splits, verifier, tokenizer alphabet and cache key; the testbed's
validation and test splits are chosen by the source (`testbed`, `testbed:test`); a countdown run trains."""

from __future__ import annotations

import pytest

from popo import build
from popo.data import prepare
from popo.config import load_config
from popo.errors import ConfigError, SetupError
from popo.rewards.make import make_verifier
from popo.testbed.addition import AdditionTask, AdditionVerifier
from popo.testbed.countdown import CountdownVerifier
from popo.testbed.countdown_task import CountdownTask
from popo.testbed.model import TinyModelSpec
from popo.testbed.sft import cache_key
from popo.testbed.tokenizer import build_tokenizer

SMALL = ["testbed.task=countdown", "testbed.numbers=3", "testbed.test_size=40", "testbed.validation_size=30"]


def test_the_task_key_picks_generator_verifier_alphabet_and_cache():
    countdown = load_config(None, SMALL)
    task = prepare.testbed_task(countdown)
    assert isinstance(task, CountdownTask) and task.numbers == 3 and task.validation_size == 30
    assert isinstance(make_verifier(countdown, log=lambda m: None), CountdownVerifier)
    addition = load_config(None, [])
    assert isinstance(prepare.testbed_task(addition), AdditionTask)
    assert isinstance(make_verifier(addition, log=lambda m: None), AdditionVerifier)
    tokenizer = build_tokenizer(task.alphabet)
    text = "7,3,5>22:7*3=21,21+1=22;22"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert "/" not in prepare.testbed_task(addition).alphabet and "/" in task.alphabet
    spec = TinyModelSpec()
    assert cache_key(task, spec, 10, 8, 1e-3, 0) != cache_key(prepare.testbed_task(addition), spec, 10, 8, 1e-3, 0)
    with pytest.raises(ConfigError, match="testbed.task"):
        load_config(None, ["testbed.task=sudoku"])


def test_validation_and_test_are_chosen_by_the_source():
    config = load_config(None, SMALL)
    validation = prepare.testbed_examples(config, "testbed", split="validation")
    test = prepare.testbed_examples(config, "testbed:test", split="validation")
    assert len(validation) == 30 and len(test) == 40 and validation[0].id.startswith("validation-")
    assert prepare.testbed_examples(config, "testbed:validation", split="test") == validation
    assert prepare.testbed_split(config, "testbed", "train") == "train"
    with pytest.raises(ConfigError, match="testbed:test"):
        prepare.testbed_examples(config, "testbed:dev", split="validation")
    legacy = load_config(None, ["testbed.validation_size=0", "testbed.test_size=50"])
    assert prepare.testbed_split(legacy, "testbed", "validation") == "test"  # no validation split: the old layout
    with pytest.raises(SetupError, match="no validation split"):
        prepare.testbed_split(legacy, "testbed:validation", "validation")


def test_the_addition_test_split_is_unchanged_and_held_out():
    task = AdditionTask(digits=3, test_size=1000, validation_size=500)
    test = [ex.problem for ex in task.test_examples()]
    assert test[:3] == ["923+701=", "448+890=", "318+679="]  # as before there was a validation split
    assert test == [ex.problem for ex in AdditionTask(digits=3, test_size=1000).test_examples()]
    validation = {ex.problem for ex in task.validation_examples()}
    assert len(validation) == 500 and not validation & set(test)
    assert not validation & {ex.problem for ex in task.train_examples(20_000, seed=0)}
    assert not validation & {p for p, _ in task.warmup_pairs(20_000, seed=0)}
    with pytest.raises(ConfigError, match="validation_size"):
        AdditionTask(digits=1, test_size=30, validation_size=30)  # 100 problems: at most half held out


def test_a_countdown_run_trains_and_logs_diagnostics(tmp_path, one_thread):
    config = load_config(None, [*SMALL, f"testbed.cache_dir={tmp_path / 'cache'}", "testbed.warmup_steps=30",
                                "testbed.warmup_batch=16", "model.device=cpu", "rollout.prompts_per_step=4",
                                "rollout.group_size=4", "rollout.max_new_tokens=24", "train.steps=2",
                                "train.diag_every=1", "train.eval_every=0", "data.eval_size=8", "train.save_every=0",
                                "train.progress=false", "train.tensorboard=false", "algo.reward_threshold=-1",
                                f"train.out_dir={tmp_path / 'run'}"])
    history = build.build_trainer(config, log=lambda m: None).run()
    assert [r["step"] for r in history] == [1, 2]
    assert all(r["rollouts"] == 16 and "grad_share/nll" in r for r in history)
    assert "eval/greedy_acc" in history[-1]
