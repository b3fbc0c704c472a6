"""Validation of a loaded configuration: every value checked before any model is loaded, each problem one
line naming the key (and, for a choice, the closest valid value). Kept beside `popo.config`, which calls
`validate` after building the dataclasses; this module does not import it (the sections arrive as
arguments)."""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from popo.errors import ConfigError
from popo.field_rules import field_problems


def suggest(key: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (valid: {', '.join(prefix + o for o in sorted(options))})"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(value: str, options: tuple[str, ...], where: str) -> None:
    _check(value in options, f"{where}={value!r} is not valid" + suggest(value, list(options)))


def validate(config: Any) -> None:
    """Reject bad values before any model is loaded: every field's own type, choice and range (stated where it
    is declared, `popo.field_rules`), then the rules that relate several fields."""
    problems = field_problems(config)
    _check(not problems, problems[0] if problems else "")
    _validate_algo(config.algo)
    _validate_optim(config.optim)
    _validate_data(config)
    _validate_reward(config.reward)
    _validate_train(config.train)
    _validate_rollout(config.rollout, config.algo, config.model.lora)
    _check(not config.train.eval_start_kl or (config.train.eval_samples > 0 and config.rollout.temperature in (0, 1)
                                              and config.rollout.top_p == 1),
           "train.eval_start_kl estimates KL(policy || start) from the evaluation's samples: it needs "
           "train.eval_samples > 0 and sampling from the policy itself (rollout.temperature=1, rollout.top_p=1)")


def _validate_algo(a: Any) -> None:
    from popo.algorithms import PRESETS

    _choice(a.name, tuple(PRESETS), "algo.name")


def _validate_optim(o: Any) -> None:
    _check(o.lr > 0, f"optim.lr must be positive, got {o.lr}")
    _check(0 <= o.warmup_ratio < 1, "optim.warmup_ratio must be in [0, 1)")
    _check(o.grad_clip >= 0 and o.micro_batch_tokens > 0, "optim.grad_clip >= 0 and micro_batch_tokens > 0")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(all(0 <= b < 1 for b in o.betas) and len(o.betas) == 2,
           f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")


def _validate_data(config: Any) -> None:
    """The model's dtype, the data and the testbed."""
    _check(config.data.eval_size >= 0, f"data.eval_size must be >= 0, got {config.data.eval_size}")
    _check(config.data.max_prompt_tokens >= 1,
           f"data.max_prompt_tokens must be >= 1, got {config.data.max_prompt_tokens}")
    tb = config.testbed
    _check(2 <= tb.numbers <= 4, f"testbed.numbers must be in 2..4, got {tb.numbers}")
    _check(tb.validation_size >= 0 and tb.test_size >= 1, "testbed.validation_size must be >= 0 and test_size >= 1")
    for where, value in (("testbed.digits", tb.digits), ("testbed.max_number", tb.max_number)):
        _check(value >= 1, f"{where} must be >= 1, got {value}")


def _validate_train(t: Any) -> None:
    from popo.tracking import TRACKERS

    for name in t.report_to:
        _choice(name, (*TRACKERS, "none"), "train.report_to")
        _check(name in ("tensorboard", "none") or importlib.util.find_spec(name) is not None,  # (a dependency)
               f"train.report_to={name} needs the {name} package: pip install 'popo[{name}]'")
    _check(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
    _check(t.keep_last >= 1 and t.max_bad_steps >= 1, "train.keep_last and max_bad_steps must be >= 1")
    for where, value in (("train.save_every", t.save_every), ("train.eval_every", t.eval_every),
                         ("train.diag_every", t.diag_every), ("train.eval_samples", t.eval_samples)):
        _check(value >= 0, f"{where} must be >= 0, got {value}")
    outside = [s for s in t.eval_steps if not 0 <= s <= t.steps]
    _check(not outside, f"train.eval_steps must lie in [0, train.steps={t.steps}], got {outside}")


def _validate_rollout(r: Any, a: Any, lora: Any) -> None:
    """The rollout settings, the LoRA settings they depend on, and the group size the algorithm needs."""
    from popo.algorithms import get_algorithm

    _check(r.max_sampling_rounds >= 1, f"rollout.max_sampling_rounds must be >= 1, got {r.max_sampling_rounds}")
    _check(0 < r.vllm_gpu_memory_utilization < 1, "rollout.vllm_gpu_memory_utilization must be in (0, 1)")
    _check(lora.r >= 0 and lora.alpha > 0 and 0 <= lora.dropout < 1,
           "model.lora.r must be >= 0, model.lora.alpha > 0 and model.lora.dropout in [0, 1)")
    _check(r.engine != "vllm" or r.vllm_mode != "server" or lora.r > 0,
           "rollout.vllm_mode=server syncs LoRA adapters only: set model.lora.r > 0 or use vllm_mode=colocate")
    _check(r.group_size >= 1 and r.prompts_per_step >= 1, "rollout.group_size and prompts_per_step must be >= 1")
    need = get_algorithm(a.name).min_group_size
    _check(r.group_size >= need, f"algo.name={a.name} needs rollout.group_size >= {need} (its credit compares "
           "the rollouts of one prompt)")
    _check(r.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    _check(0 < r.top_p <= 1 and r.temperature >= 0, "rollout.top_p must be in (0, 1] and temperature >= 0")
    _check(r.max_batch_rollouts >= 1, f"rollout.max_batch_rollouts must be >= 1, got {r.max_batch_rollouts}")


def _validate_reward(reward: Any) -> None:
    """Names and weights of `reward.functions`; whether a built-in exists and a function imports is checked
    when the run is assembled (`popo.rewards.make.make_verifier`)."""
    import re

    for name in reward.functions:
        _check(re.fullmatch(r"[A-Za-z_][\w-]*|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", name) is not None,
               f"reward.functions: {name!r} is neither a built-in name (math, testbed) nor package.module:function")
    _check(len(set(reward.functions)) == len(reward.functions), f"reward.functions lists a function twice: "
           f"{list(reward.functions)}")
    count = len(reward.functions) or 1  # no functions: the default one
    _check(not reward.weights or len(reward.weights) == count,
           f"reward.weights has {len(reward.weights)} values for {count} reward.functions "
           f"({list(reward.functions) or 'the default'}); give one weight per function, or none")
    _check(reward.timeout_s > 0 and reward.num_workers >= 1 and reward.items_per_call >= 1
           and reward.max_memory_mb >= 0, "reward.timeout_s must be > 0, reward.num_workers and "
           "reward.items_per_call >= 1, reward.max_memory_mb >= 0")


def check_reward_modules(reward: Any) -> None:
    """Before any model is loaded, a `reward.functions` module that cannot be found at all is a ConfigError
    that says where popo looked. Not part of `validate`: where a module is found depends on the process
    (its working folder and `sys.path`), not on the configuration; a module that is found but fails to
    import is reported by the reward workers (`popo.rewards.make.make_verifier`)."""
    import os
    import sys

    for spec in reward.functions:
        module, sep, _ = spec.partition(":")
        top = module.split(".")[0]
        if not sep:
            continue
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = True  # it exists but misbehaves: the workers' import names the problem
        if not found:
            pythonpath = os.environ.get("PYTHONPATH", "")
            raise ConfigError(
                f"reward.functions: '{spec}': module '{module}' does not import (ModuleNotFoundError: no module "
                f"named '{top}'): looked for {top}.py or a {top}/ package in the folder popo runs from "
                f"({os.getcwd()}), in PYTHONPATH ({pythonpath or 'not set'}) and in the installed packages "
                f"({len(sys.path)} folders on sys.path); run popo from the folder that holds it, or add that "
                "folder to PYTHONPATH")
