"""The prompts of a run: its training and held-out examples (the testbed's splits, local files or hub
datasets), rendered with the template and checked against the prompt-length cap. `popo.build` calls these
while assembling a run; `popo eval` uses the same testbed splits."""

from __future__ import annotations

from collections.abc import Callable

from popo.config import Config
from popo.data.example import Example
from popo.errors import ConfigError, DataError, SetupError


def testbed_task(config: Config):
    """The task `testbed.task` names, sized by the other `testbed.*` keys: it picks the generator and its
    splits, the verifier, the tokenizer's alphabet and the warm-up cache key."""
    tb = config.testbed
    if tb.task == "countdown":
        from popo.testbed.countdown_task import CountdownTask

        return CountdownTask(numbers=tb.numbers, max_number=tb.max_number, test_size=tb.test_size,
                             validation_size=tb.validation_size)
    from popo.testbed.task import AdditionTask

    return AdditionTask(digits=tb.digits, test_size=tb.test_size, validation_size=tb.validation_size)


def resolve_eval_source(config: Config) -> str:
    """The held-out source a run evaluates on: `data.eval_source`, where `auto` means the testbed's
    validation split when training on the testbed and no evaluation otherwise (evaluating a run on
    another task's problems would read 0.0 from the start and say nothing)."""
    source = config.data.eval_source
    if source != "auto":
        return source
    return "testbed" if is_testbed(config.data.source) else ""


def is_testbed(source: str) -> bool:
    """Whether a data source names the testbed: `testbed`, or `testbed:SPLIT` (train, validation, test)."""
    return source == "testbed" or source.startswith("testbed:")


def testbed_split(config: Config, source: str, split: str) -> str:
    """The testbed split `source` reads: the one it names (`testbed:test`, `testbed:validation`) or, for a
    bare `testbed`, `split`; with `testbed.validation_size=0` (no validation split, the layout before there
    was one) a bare `testbed` asked for validation reads the test split."""
    name = source.partition(":")[2] or split
    if name not in ("train", "validation", "test"):
        raise ConfigError(f"unknown testbed split in {source!r}: use testbed, testbed:validation or testbed:test")
    if name == "validation" and config.testbed.validation_size == 0:
        if source != "testbed":
            raise SetupError(f"{source}: the testbed has no validation split (testbed.validation_size=0)")
        return "test"
    return name


def testbed_examples(config: Config, source: str, *, split: str) -> list[Example]:
    """The examples of the testbed split `testbed_split(config, source, split)`."""
    name, task = testbed_split(config, source, split), testbed_task(config)
    if name == "train":
        return task.train_examples(config.testbed.train_size, seed=0)
    return task.validation_examples() if name == "validation" else task.test_examples()


def load_examples_for(config: Config, source: str, *, split: str, log: Callable[[str], None]) -> list[Example]:
    """Examples from the testbed generator (`testbed_examples`), a local file or a hub dataset."""
    if is_testbed(source):
        return testbed_examples(config, source, split=split)
    from popo.data.sources import load_examples

    d = config.data
    examples, report = load_examples(source, split=split, problem_key=d.problem_key,
                                     answer_key=d.answer_key, on_bad_row=d.on_bad_row)
    skipped = getattr(report, "skipped", 0)
    if skipped:
        log(f"data: skipped {skipped} bad rows in {source} ({report})")
    if not examples:
        raise SetupError(f"dataset {source!r} has no usable rows")
    return examples


def held_out_examples(config: Config, log: Callable[[str], None]) -> tuple[str, str, list[Example]]:
    """(source, split, examples) of a run's held-out evaluation, cut to `data.eval_size`: the bare testbed
    means its validation split (choices), `testbed:test` its test split, any other source its test split;
    no source (`resolve_eval_source`) gives no examples."""
    source = resolve_eval_source(config)
    split = testbed_split(config, source, "validation") if is_testbed(source) else "test"
    examples = load_examples_for(config, source, split=split, log=log) if source else []
    return source, split, examples[: config.data.eval_size] if config.data.eval_size else examples


def render_prompts(config: Config, examples: list[Example], tokenizer) -> list[str]:
    """Each example's prompt: chat rows with the tokenizer's chat template, text problems under `data.template`."""
    from popo.data.templates import render_example

    return [render_example(ex, config.data.template, tokenizer) for ex in examples]


def fit_prompts(config: Config, examples: list[Example], tokenizer, *, context: int | None, source: str,
                split: str, log: Callable[[str], None]) -> tuple[list[Example], list[str]]:
    """The rendered prompts and their examples, with the prompt-length cap applied.

    The cap is `data.max_prompt_tokens`, and the model's context (`context` tokens) less
    `rollout.max_new_tokens` when that is smaller. A longer prompt is a `DataError` naming file, line
    and field, or with `data.on_bad_row=skip` is dropped and counted in the log.
    """
    from popo.data.sources import locate_examples

    d = config.data
    prompts = render_prompts(config, examples, tokenizer)
    limit, why = d.max_prompt_tokens, f"data.max_prompt_tokens={d.max_prompt_tokens}"
    if context:
        room = context - config.rollout.max_new_tokens
        if room < 1:
            raise SetupError(f"rollout.max_new_tokens={config.rollout.max_new_tokens} leaves no room for a "
                             f"prompt in the model's context of {context} tokens")
        if room < limit:
            limit, why = room, f"model context {context} - rollout.max_new_tokens {config.rollout.max_new_tokens}"
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return examples, prompts
    first = examples[too_long[0]]
    where = (locate_examples(source, [first.id], split=split, problem_key=d.problem_key,
                             answer_key=d.answer_key) if not is_testbed(source) else {})
    message = (f"{where.get(first.id, f'{source}: example {first.id!r}')}: field '{d.problem_key or 'problem'}': "
               f"the prompt is {lengths[too_long[0]]} tokens with the template, over the limit of {limit} ({why})")
    if d.on_bad_row == "error":
        raise DataError(message + "; data.on_bad_row=skip drops such prompts and counts them")
    log(f"data: skipped {len(too_long)} prompts longer than {limit} tokens in {source} (first: {message})")
    dropped = set(too_long)
    kept = [i for i in range(len(examples)) if i not in dropped]
    if not kept:
        raise SetupError(f"dataset {source!r} has no prompt within {limit} tokens")
    return [examples[i] for i in kept], [prompts[i] for i in kept]
