"""User reward functions (`reward.functions`, `reward.weights`): TRL's signature, the weighted sum, None,
misbehaving functions in worker processes, and the errors for bad input before training."""

from __future__ import annotations

import textwrap

import pytest

from conftest import run_with_deadline
from popo.config import load_config
from popo.data.example import Example
from popo.errors import ConfigError
from popo.rewards import FunctionVerifier
from popo.rewards.composite import CompositeReward, RewardPart, reward_metrics
from popo.rewards.functions import FunctionPool

USER_MODULE = '''
import os, time

def exact(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def short_bonus(completions, **kwargs):
    return [0.5 if len(c) < 4 else 0.0 for c in completions]

def by_level(completions, level):          # no **kwargs: receives only the columns it names
    return [None if lv is None else float(lv) for lv in level]

# written the way TRL's documentation writes them (conversational datasets)
def trl_accuracy(completions, solution, **kwargs):
    contents = [c[0]["content"] for c in completions]
    return [1.0 if c == s else 0.0 for c, s in zip(contents, solution)]

def echo_prompt_roles(prompts, completions, **kwargs):
    return [float(len(p)) for p in prompts]  # number of chat messages in each prompt

# the misbehaving ones misbehave only on a call that holds the completion "bad"
def hangs(completions, **kwargs):
    if "bad" in completions:
        time.sleep(600)
    return [1.0] * len(completions)

def busy_c_loop(completions, **kwargs):   # swallows the soft timeout: only the parent's hard kill stops it
    while "bad" in completions:
        try:
            time.sleep(600)
        except BaseException:
            pass
    return [1.0] * len(completions)

def raises(completions, **kwargs):
    if "bad" in completions:
        raise KeyError("no such column")
    return [1.0] * len(completions)

def exits(completions, **kwargs):
    if "bad" in completions:
        raise SystemExit(1)
    return [1.0] * len(completions)

def nan_for_bad(completions, **kwargs):
    return [float("nan") if c == "bad" else 1.0 for c in completions]

def wrong_length(completions, **kwargs):
    return [1.0] * (len(completions) - ("bad" in completions))

def not_numbers(completions, **kwargs):
    return ["high" if "bad" in completions else 1.0] * len(completions)

def crashes(completions, **kwargs):
    if "bad" in completions:
        os._exit(3)
    return [1.0] * len(completions)

def greedy_memory(completions, **kwargs):
    block = bytearray(3 * 1024 ** 3)
    return [float(len(block))] * len(completions)

def always_one(completions, **kwargs):
    return [1.0] * len(completions)

def needs_x(completions, x):
    return [0.0] * len(completions)

def positional_only(prompts, completions, /):
    return [0.0] * len(completions)

def no_completions(prompts):
    return []

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A reward module importable by this process and, through the path it hands them, by the workers."""
    (tmp_path / "user_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_rewards"


def composite(names: list[str], weights: list[float], *, builtins: dict | None = None, timeout_s: float = 5.0,
              max_memory_mb: int = 0, columns=("answer", "level", "solution"), log=None):
    builtins = builtins or {}
    specs = [n for n in names if n not in builtins]
    pool = FunctionPool(specs, columns=columns, num_workers=1, timeout_s=timeout_s, max_memory_mb=max_memory_mb)
    pool.wait_ready()
    parts = [RewardPart(n.rpartition(":")[2], w, verifier=builtins.get(n),
                        function=specs.index(n) if n in specs else None) for n, w in zip(names, weights)]
    return CompositeReward(parts, pool=pool, items_per_call=2, log=log or (lambda m: None))


def test_weighted_sum_skips_none_and_passes_the_dataset_columns(user_module):
    reward = composite([f"{user_module}:exact", f"{user_module}:short_bonus", f"{user_module}:by_level"],
                       [1.0, 2.0, 0.5])
    with reward:
        examples = [Example("p", "5", columns={"level": 3}), Example("q", "6", columns={"level": None}),
                    Example("r", "7", columns={"level": 1})]
        rewards = reward.score_rows(["p", "q", "r"], ["5", "a long answer", "8"], examples)
        # 1*1 + 2*0.5 + 0.5*3 = 3.5;  0 + 0 + (None: left out) = 0;  0 + 2*0.5 + 0.5*1 = 1.5
        assert rewards == [3.5, 0.0, 1.5]
        metrics = reward_metrics(reward.take_metrics())
        assert metrics["reward/by_level"] == 2.0 and metrics["reward/by_level/none"] == 1
        assert metrics["reward/exact"] == pytest.approx(1 / 3, abs=1e-9) and metrics["reward/exact/failed"] == 0
        assert reward_metrics(reward.take_metrics())["reward/exact/none"] == 0  # counts restart after a take


def test_a_trl_reward_function_works_unchanged_on_chat_prompts(user_module):
    reward = composite([f"{user_module}:trl_accuracy", f"{user_module}:echo_prompt_roles"], [1.0, 0.25])
    with reward:
        chat = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"})
        examples = [Example("1+1?", "2", messages=chat, columns={"solution": "2"}),
                    Example("2+2?", "4", messages=chat[1:], columns={"solution": "4"})]
        # the conversational form: prompts as message lists, completions as [{"role": "assistant", ...}]
        assert reward.score_rows(["<rendered>", "<rendered>"], ["2", "5"], examples) == [1.0 + 0.25 * 2, 0.25 * 1]


@pytest.mark.parametrize("function, kind", [
    ("hangs", "timeout"), ("busy_c_loop", "timeout"), ("raises", "error"), ("exits", "error"),
    ("wrong_length", "error"), ("not_numbers", "error"), ("crashes", "crash"), ("nan_for_bad", "non-finite"),
])
def test_a_misbehaving_function_costs_its_items_zero_and_the_run_goes_on(user_module, function, kind):
    # 2 items a call: the call holding "bad" fails (for NaN only the item itself); the built-in scores every
    # item 1 and the user function 1 where it works, so a working item totals 2
    messages = []
    reward = composite(["builtin", f"{user_module}:{function}"], [1.0, 1.0], timeout_s=0.5, log=messages.append,
                       builtins={"builtin": FunctionVerifier(lambda c, a: 1.0)})
    expected = [0.0, 2.0, 2.0, 2.0] if kind == "non-finite" else [0.0, 0.0, 2.0, 2.0]
    with reward:
        texts = ["bad", "fine", "also", "fine"]
        examples = [Example("p", "x") for _ in texts]
        for _ in range(2):  # the second time round the pool has recovered
            assert run_with_deadline(lambda: reward.score_rows(["p"] * 4, texts, examples), 60) == expected
        failed = reward_metrics(reward.take_metrics())[f"reward/{function}/failed"]
        assert failed == 2 * expected.count(0.0)
        assert len(messages) == 1 and function in messages[0] and f": {kind}: " in messages[0]


def test_a_failing_penalty_function_never_raises_the_reward(user_module):
    reward = composite(["builtin", f"{user_module}:crashes"], [1.0, -1.0],
                       builtins={"builtin": FunctionVerifier(lambda c, a: 1.0)})
    with reward:
        assert run_with_deadline(lambda: reward.score_rows(["p"], ["x"], [Example("p", "x")]), 60) == [0.0]


def test_the_memory_cap_turns_a_huge_allocation_into_a_failed_call(user_module):
    reward = composite([f"{user_module}:greedy_memory", f"{user_module}:always_one"], [1.0, 1.0], max_memory_mb=1024)
    with reward:
        assert reward.score_rows(["p"], ["x"], [Example("p", "x")]) == [0.0]
        assert reward_metrics(reward.take_metrics())["reward/greedy_memory/failed"] == 1


@pytest.mark.parametrize("overrides, message", [
    (["reward.functions=broken_rewards:f"], "module 'broken_rewards' does not import (RuntimeError: broken on import)"),
    (["reward.functions=no_such_module:f"], "module 'no_such_module' does not import (ModuleNotFoundError"),
    (["reward.functions=user_rewards:exactt"], "has no function 'exactt' (did you mean 'user_rewards:exact'?)"),
    (["reward.functions=user_rewards:NOT_A_FUNCTION"], "'NOT_A_FUNCTION' is a int, not a function"),
    (["reward.functions=user_rewards:needs_x"], "wrong signature: it requires 'x'"),
    (["reward.functions=user_rewards:no_completions"], "wrong signature: it takes no 'completions'"),
    (["reward.functions=user_rewards:positional_only"], "argument 'prompts' is positional-only"),
    (["reward.functions=mth"], "unknown built-in 'mth' (did you mean 'math'?)"),
])
def test_bad_reward_functions_are_config_errors_naming_the_option(user_module, overrides, message):
    from popo.rewards.make import make_verifier

    config = load_config(None, ["data.source=rows.jsonl", *overrides])
    with pytest.raises(ConfigError) as err:
        make_verifier(config, columns=["answer"])
    assert str(err.value).startswith("reward.functions: ") and message in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["reward.functions=math,user_rewards:exact", "reward.weights=1"], "reward.weights has 1 values for 2"),
    (["reward.functions=user rewards:x"], "reward.functions: 'user rewards:x' is neither"),
    (["reward.functions=math,math"], "reward.functions lists a function twice"),
])
def test_bad_reward_settings_are_rejected_when_the_config_is_read(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_one_builtin_with_weight_one_is_the_plain_verifier():
    from popo.rewards.make import make_verifier
    from popo.testbed.addition import AdditionVerifier

    assert isinstance(make_verifier(load_config(None, [])), AdditionVerifier)  # the testbed's, as before
    assert isinstance(make_verifier(load_config(None, ["reward.weights=2"])), CompositeReward)


def test_training_and_evaluating_with_a_user_reward_function(user_module, tiny_testbed, tmp_path, one_thread):
    from popo.build import build_trainer

    config = load_config(None, [*tiny_testbed, "train.steps=2", f"train.out_dir={tmp_path / 'run'}",
                                f"reward.functions=testbed,{user_module}:short_bonus", "reward.weights=1,2",
                                "train.eval_every=2"])
    history = build_trainer(config, log=lambda m: None).run()
    last = history[-1]
    assert {"reward/testbed", "reward/short_bonus", "reward/short_bonus/failed", "reward/short_bonus/none"} <= set(last)
    assert last["reward/short_bonus/failed"] == 0 and "eval/greedy_acc" in last
