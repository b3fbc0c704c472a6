"""Launcher: `accelerate launch -m popo.integrations.trl --config recipe.yaml [--key value ...]`.

Parses the recipe the way TRL's own scripts do (`TrlParser`: a flat YAML mapping, command-line flags
override it) into three dataclasses: `LaunchArguments` below (data and rewards), `POPOConfig` (TRL's
training settings plus `popo_*`) and TRL's `ModelConfig` (model, dtype, PEFT). Prompts are read with
popo's loader (`popo.data.sources`: local .jsonl/.json/.parquet or a hub id; problem and answer columns)
and rendered with a popo template; rewards are popo's math verifier (worker processes with time limits,
since completions are untrusted text) and/or TRL-style reward functions named `package.module:function`, as
in `popo train`. Reward functions get the same keyword columns as in `popo train` (every dataset column,
plus `answer`, the gold as loaded), and their signatures are checked against those columns before the model
loads. `python -m popo.integrations.trl --help` lists every option.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from popo.errors import ConfigError, PopoError


@dataclass
class LaunchArguments:
    train_file: str = field(default="", metadata={"help": "Training prompts: a .jsonl/.json/.parquet file or a "
                                                          "hub dataset id (columns: problem and answer or solution)."})
    split: str = field(default="train", metadata={"help": "Dataset split for hub sources."})
    template: str = field(default="qwen-math", metadata={"help": "Prompt template: qwen-math, qwen-boxed, r1, "
                                                                 "plain, or a string containing {problem}."})
    problem_key: str | None = field(default=None, metadata={"help": "Column holding the problem."})
    answer_key: str | None = field(default=None, metadata={"help": "Column holding the answer."})
    on_bad_row: str = field(default="error", metadata={"help": "A malformed row: error (stop) or skip."})
    rewards: list[str] = field(default_factory=lambda: ["math"], metadata={
        "help": "Reward functions: `math` (popo's math verifier) or `package.module:function` (as in popo train; "
                "TRL signature f(prompts, completions, **columns) -> list[float], columns: every dataset column "
                "plus `answer`; the old spelling package.module.function still works, deprecated); several are "
                "weighted by TRL's reward_weights."})
    verifier_workers: int = field(default=4, metadata={"help": "math: verifier worker processes (0 = in process)."})
    verifier_timeout_s: float = field(default=5.0, metadata={"help": "math: time limit per completion."})


class MathReward:
    """popo's `MathVerifier` behind TRL's reward-function signature (gold answers from the `answer` column)."""

    __name__ = "math"

    def __init__(self, workers: int, timeout_s: float):
        from popo.rewards import MathVerifier

        self.verifier = MathVerifier(num_workers=workers, timeout_s=timeout_s)

    def __call__(self, prompts, completions, answer, **kwargs) -> list[float]:
        return self.verifier.score(completions, answer)

    def close(self) -> None:
        self.verifier.close()


# FutureWarnings a run cannot act on: TRL 1.16 itself uses the names of gradient checkpointing that transformers
# 5.10 renamed to activation checkpointing (its configs default `gradient_checkpointing`; its generation reads
# `is_gradient_checkpointing` and calls `gradient_checkpointing_disable` / `_enable`): six warnings a run, which
# the launcher hides, and no other warning
TRL_DEPRECATIONS = r"`\w*gradient_checkpointing\w*` is deprecated and will be removed in v6"

# what TRL's GRPOTrainer passes to every reward function beside prompts, completions and the dataset columns
TRL_EXTRAS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


def reward_function(name: str, launch: LaunchArguments, log: Callable[[str], None] | None = None):
    """The reward function `name`: `math`, or `package.module:function` imported from the working directory
    (`package.module.function`, the launcher's old spelling, still works with a deprecation note)."""
    if name == "math":
        return MathReward(launch.verifier_workers, launch.verifier_timeout_s)
    module, colon, attribute = name.partition(":")
    if not colon:
        module, _, attribute = name.rpartition(".")
        if module and attribute:
            (log or _stderr)(f"note: rewards: {name!r} is the deprecated spelling; write "
                             f"'{module}:{attribute}' (package.module:function, as in popo train)")
    if not module or not attribute:
        raise ConfigError(f"rewards: unknown reward {name!r} (use math or package.module:function)")
    sys.path.insert(0, str(Path.cwd()))  # like TRL's scripts: modules beside the recipe's working directory
    try:
        fn = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"rewards: cannot load {name!r}: {err}") from None
    if not callable(fn):
        raise ConfigError(f"rewards: {name!r} is a {type(fn).__name__}, not a function")
    return fn


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class NamedColumns:
    """A reward function without `**kwargs` called with only the arguments it names (as `popo train` calls
    it), since TRL passes every column and a few extras (`TRL_EXTRAS`) to every reward function."""

    def __init__(self, fn, accepted: set[str]):
        self.fn, self.accepted = fn, accepted
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, **kwargs):
        return self.fn(**{k: v for k, v in kwargs.items() if k in self.accepted})


def checked_rewards(rewards: list, names: Sequence[str], columns: Sequence[str]) -> list:
    """`rewards` with their signatures checked against the columns the dataset passes (a ConfigError naming
    the function, the argument it requires and the available columns), before any model loads; functions
    without `**kwargs` are wrapped to receive only what they name."""
    from popo.rewards.function_worker import RewardSetupError, check_signature

    out = []
    for fn, name in zip(rewards, names):
        if isinstance(fn, MathReward):
            out.append(fn)
            continue
        try:
            accepted = check_signature(fn, name, list(columns), TRL_EXTRAS)
        except RewardSetupError as err:
            raise ConfigError(f"rewards: {err} (TRL also passes {', '.join(TRL_EXTRAS)}); rename the argument "
                              "or add the column to train_file") from None
        out.append(fn if accepted is None else NamedColumns(fn, accepted))
    return out


def prompts_dataset(launch: LaunchArguments, tokenizer):
    """A `datasets.Dataset` with `prompt` (rendered text) and the columns `popo train` hands reward functions:
    each dataset column (None where a row lacks it) and `answer` (the gold as loaded)."""
    from datasets import Dataset

    from popo.data.sources import load_examples
    from popo.data.templates import render_prompt
    from popo.rewards.composite import dataset_columns

    if not launch.train_file:
        raise ConfigError("train_file: set the training prompts (a local file or a hub dataset id)")
    examples, _ = load_examples(launch.train_file, split=launch.split, problem_key=launch.problem_key,
                                answer_key=launch.answer_key, on_bad_row=launch.on_bad_row)
    columns = {k: v for k, v in dataset_columns(examples).items() if k != "prompt"}
    golds = columns["answer"]
    if any(isinstance(g, (list, tuple)) for g in golds):  # one Arrow type: then every gold is a list
        columns["answer"] = [list(g) if isinstance(g, (list, tuple)) else [g] for g in golds]
    prompts = [render_prompt(ex.problem, launch.template, tokenizer) for ex in examples]
    try:
        return Dataset.from_dict({"prompt": prompts, **columns})
    except Exception as err:  # pyarrow: one column holds values of different types
        raise ConfigError(f"train_file: {launch.train_file}: a column cannot be stored as one type for TRL "
                          f"(columns: {', '.join(columns)}): {err}") from None


def parse(argv: list[str] | None):
    """(LaunchArguments, POPOConfig, ModelConfig) from `--config FILE` and flags; an unknown recipe key is
    a ConfigError naming its line and the closest valid key."""
    from trl import ModelConfig, TrlParser

    from popo.integrations.trl.config import POPOConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser((LaunchArguments, POPOConfig, ModelConfig))
    *parsed, unknown_in_file, unknown_flags = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True)
    valid = [a.dest for a in parser._actions]
    if unknown_in_file:
        path = Path(argv[argv.index("--config") + 1])
        key = unknown_in_file[0].removeprefix("--")
        lines = path.read_text().splitlines()
        line = next((i for i, text in enumerate(lines, 1) if re.match(rf"\s*{re.escape(key)}\s*:", text)), 0)
        raise ConfigError(f"{path}:{line}: unknown key '{key}'{_closest(key, valid)}")
    if unknown_flags:
        flag = unknown_flags[0].lstrip("-")
        raise ConfigError(f"unknown option '{unknown_flags[0]}'{_closest(flag, valid)}")
    return parsed


def _closest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TRL_DEPRECATIONS, category=FutureWarning)
        return _launch(argv)


def _launch(argv: list[str] | None) -> int:
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from popo.integrations.trl.trainer import POPOTrainer

    try:
        launch, args, model_args = parse(argv)
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                  trust_remote_code=args.trust_remote_code)
        dataset = prompts_dataset(launch, tokenizer)
        rewards = [reward_function(name, launch) for name in launch.rewards]
        rewards = checked_rewards(rewards, launch.rewards, [c for c in dataset.column_names if c != "prompt"])
    except PopoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    args.model_init_kwargs = {"revision": model_args.model_revision, "trust_remote_code": args.trust_remote_code,
                              "attn_implementation": model_args.attn_implementation, "dtype": model_args.dtype,
                              **(args.model_init_kwargs or {})}
    try:
        trainer = POPOTrainer(model=model_args.model_name_or_path, reward_funcs=rewards, args=args,
                              train_dataset=dataset, processing_class=tokenizer, peft_config=get_peft_config(model_args))
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        trainer.save_model(args.output_dir)
        trainer.accelerator.end_training()  # trackers finished, process group left (Trainer.end in newer releases)
    finally:
        for reward in rewards:
            if isinstance(reward, MathReward):
                reward.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
