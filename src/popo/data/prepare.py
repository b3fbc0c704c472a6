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
        from popo.testbed.countdown_task import CountdownTask, parse_reserved

        return CountdownTask(numbers=tb.numbers, max_number=tb.max_number, test_size=tb.test_size,
                             validation_size=tb.validation_size, reserved=parse_reserved(tb.reserved))
    if tb.reserved:
        raise ConfigError(f"testbed.reserved={tb.reserved}: only the countdown testbed has reserved splits "
                          f"(testbed.task=countdown); set testbed.reserved= (empty) for {tb.task}")
    from popo.testbed.addition import AdditionTask

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
    if name not in ("train", "validation", "test") and name not in reserved_names(config):
        raise ConfigError(f"unknown testbed split in {source!r}: use testbed, testbed:validation, testbed:test or "
                          f"a split of testbed.reserved")
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
    if name in reserved_names(config):
        return task.reserved_examples(name)
    return task.validation_examples() if name == "validation" else task.test_examples()


def reserved_names(config: Config) -> tuple[str, ...]:
    """The split names of `testbed.reserved` (countdown only; none on other tasks)."""
    if config.testbed.task != "countdown" or not config.testbed.reserved:
        return ()
    from popo.testbed.countdown_task import parse_reserved

    return tuple(name for name, _ in parse_reserved(config.testbed.reserved))


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
    """The rendered prompts and their examples, checked against the tokenizer and the prompt-length cap.

    The cap is `data.max_prompt_tokens`, and the model's context (`context` tokens) less
    `rollout.max_new_tokens` when that is smaller. A prompt of more characters than the cap can hold
    (`popo.data.prompt_checks.max_prompt_chars`) is refused before anything is tokenized, so a huge line
    costs no tokenizer time or memory; the others are tokenized, and one over the cap is refused. A prompt
    holding characters the tokenizer cannot represent (it would drop them, or turn them into its unknown
    token: the model would see mangled text) is refused too. Each refusal is a `DataError` naming file, line
    and field; with `data.on_bad_row=skip` such prompts are dropped and counted in the log.
    """
    from popo.data.prompt_checks import known_characters, max_prompt_chars, unrepresentable

    field = f"field '{config.data.problem_key or 'problem'}'"
    limit, why = _prompt_limit(config, context)
    prompts = render_prompts(config, examples, tokenizer)
    most = max_prompt_chars(tokenizer, limit)
    huge = [i for i, prompt in enumerate(prompts) if len(prompt) > most]
    if huge:
        message = (f"{_where(config, source, split, examples[huge[0]])}: {field}: the prompt is "
                   f"{len(prompts[huge[0]]):,} characters with the template, more than the limit of {limit} tokens "
                   f"({why}) can hold (at most {most:,} characters: {most // limit} per token for this tokenizer)")
        examples, prompts = _drop(config, (examples, prompts), set(huge), source, message,
                                  f"prompts longer than {limit} tokens", log)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    bad = unrepresentable(tokenizer, prompts, ids)
    if bad:
        first, chars = next(iter(bad.items()))
        message = (f"{_where(config, source, split, examples[first])}: {field}: characters the tokenizer cannot "
                   f"represent: {chars} (they would be dropped from the text the model sees, or reach it as the "
                   f"unknown token){known_characters(tokenizer)}")
        examples, prompts, ids = _drop(config, (examples, prompts, ids), set(bad), source, message,
                                       "prompts with characters the tokenizer cannot represent", log)
    too_long = [i for i, row in enumerate(ids) if len(row) > limit]
    if not too_long:
        return examples, prompts
    message = (f"{_where(config, source, split, examples[too_long[0]])}: {field}: "
               f"the prompt is {len(ids[too_long[0]])} tokens with the template, over the limit of {limit} ({why})")
    examples, prompts = _drop(config, (examples, prompts), set(too_long), source, message,
                              f"prompts longer than {limit} tokens", log)
    return examples, prompts


def _prompt_limit(config: Config, context: int | None) -> tuple[int, str]:
    """(the most tokens a prompt may have, why): `data.max_prompt_tokens`, or the model's context less
    `rollout.max_new_tokens` when smaller; a SetupError when that leaves no room at all."""
    d, new = config.data, config.rollout.max_new_tokens
    limit, why = d.max_prompt_tokens, f"data.max_prompt_tokens={d.max_prompt_tokens}"
    if context:
        room = context - new
        if room < 1:
            raise SetupError(f"rollout.max_new_tokens={new} leaves no room for a prompt in the model's context of "
                             f"{context} tokens")
        if room < limit:
            limit, why = room, f"model context {context} - rollout.max_new_tokens {new}"
    return limit, why


def _where(config: Config, source: str, split: str, example: Example) -> str:
    """`file:line` of an example of a local file (else the source and the example's id)."""
    from popo.data.sources import locate_examples

    d = config.data
    where = (locate_examples(source, [example.id], split=split, problem_key=d.problem_key,
                             answer_key=d.answer_key) if not is_testbed(source) else {})
    return where.get(example.id, f"{source}: example {example.id!r}")


def _drop(config: Config, columns: tuple[list, ...], bad: set[int], source: str, message: str, what: str,
          log: Callable[[str], None]) -> tuple[list, ...]:
    """The parallel lists `columns` (examples, prompts, ...) without the `bad` rows, logged and counted
    (`data.on_bad_row=skip`); a DataError with `message` else."""
    if config.data.on_bad_row == "error":
        raise DataError(message + "; data.on_bad_row=skip drops such prompts and counts them")
    log_line = f"data: skipped {len(bad)} {what} in {source} (first: {message})"
    kept = [i for i in range(len(columns[0])) if i not in bad]
    if not kept:
        raise SetupError(f"dataset {source!r} has no usable prompt: {log_line}")
    log(log_line)
    return tuple([column[i] for i in kept] for column in columns)
