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
    """The rendered prompts and their examples, checked against the tokenizer and the prompt-length cap.

    A prompt holding characters the tokenizer cannot represent (they would become its unknown token, which
    the testbed's character tokenizer decodes to nothing: the model would see mangled text) is a
    `DataError` naming file, line and the characters. The cap is `data.max_prompt_tokens`, and the model's
    context (`context` tokens) less `rollout.max_new_tokens` when that is smaller; a longer prompt is a
    `DataError` naming file, line and field. With `data.on_bad_row=skip` such prompts are dropped and
    counted in the log.
    """
    d = config.data
    prompts = render_prompts(config, examples, tokenizer)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    bad = unrepresentable(tokenizer, prompts, ids)
    if bad:
        first, chars = next(iter(bad.items()))
        message = (f"{_where(config, source, split, examples[first])}: field '{d.problem_key or 'problem'}': "
                   f"characters the tokenizer cannot represent: {chars} (they would reach the model as its "
                   f"unknown token, silently dropped from the text){_known_characters(tokenizer)}")
        examples, prompts, ids = _drop(config, examples, prompts, ids, set(bad), source, message,
                                       "prompts with characters the tokenizer cannot represent", log)
    limit, why = d.max_prompt_tokens, f"data.max_prompt_tokens={d.max_prompt_tokens}"
    if context:
        room = context - config.rollout.max_new_tokens
        if room < 1:
            raise SetupError(f"rollout.max_new_tokens={config.rollout.max_new_tokens} leaves no room for a "
                             f"prompt in the model's context of {context} tokens")
        if room < limit:
            limit, why = room, f"model context {context} - rollout.max_new_tokens {config.rollout.max_new_tokens}"
    too_long = [i for i, row in enumerate(ids) if len(row) > limit]
    if not too_long:
        return examples, prompts
    message = (f"{_where(config, source, split, examples[too_long[0]])}: field '{d.problem_key or 'problem'}': "
               f"the prompt is {len(ids[too_long[0]])} tokens with the template, over the limit of {limit} ({why})")
    examples, prompts, _ = _drop(config, examples, prompts, ids, set(too_long), source, message,
                                 f"prompts longer than {limit} tokens", log)
    return examples, prompts


def _where(config: Config, source: str, split: str, example: Example) -> str:
    """`file:line` of an example of a local file (else the source and the example's id)."""
    from popo.data.sources import locate_examples

    d = config.data
    where = (locate_examples(source, [example.id], split=split, problem_key=d.problem_key,
                             answer_key=d.answer_key) if not is_testbed(source) else {})
    return where.get(example.id, f"{source}: example {example.id!r}")


def _drop(config: Config, examples: list[Example], prompts: list[str], ids: list, bad: set[int], source: str,
          message: str, what: str, log: Callable[[str], None]) -> tuple[list[Example], list[str], list]:
    """Without the `bad` rows, logged and counted (`data.on_bad_row=skip`); a DataError with `message` else."""
    if config.data.on_bad_row == "error":
        raise DataError(message + "; data.on_bad_row=skip drops such prompts and counts them")
    log_line = f"data: skipped {len(bad)} {what} in {source} (first: {message})"
    kept = [i for i in range(len(examples)) if i not in bad]
    if not kept:
        raise SetupError(f"dataset {source!r} has no usable prompt: {log_line}")
    log(log_line)
    return [examples[i] for i in kept], [prompts[i] for i in kept], [ids[i] for i in kept]


def _unknown_id(tokenizer) -> int | None:
    """The id of the tokenizer's unknown token: the wrapper's, else the one of its `tokenizers` model (the
    testbed's character tokenizer sets only the latter); None when it has none (byte-level tokenizers)."""
    if getattr(tokenizer, "unk_token_id", None) is not None:
        return tokenizer.unk_token_id
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    name = getattr(model, "unk_token", None)
    return tokenizer.convert_tokens_to_ids(name) if isinstance(name, str) and name else None


def unrepresentable(tokenizer, prompts: list[str], ids: list[list[int]]) -> dict[int, str]:
    """{prompt index: its characters the tokenizer can only encode as its unknown token, quoted}, for the
    prompts whose token ids (`ids`) hold the unknown token."""
    unknown = _unknown_id(tokenizer)
    if unknown is None:
        return {}
    verdict: dict[str, bool] = {}  # character -> encodes to the unknown token on its own
    out = {}
    for i, (prompt, row) in enumerate(zip(prompts, ids)):
        if unknown not in row:
            continue
        for ch in set(prompt) - set(verdict):
            verdict[ch] = unknown in tokenizer(ch, add_special_tokens=False)["input_ids"]
        chars = sorted(ch for ch in set(prompt) if verdict[ch])
        out[i] = ", ".join(repr(ch) for ch in chars) if chars else "(some sequence of characters)"
    return out


def _known_characters(tokenizer) -> str:
    """'; it knows only ...' for a small character-level vocabulary (the testbed's), else ''."""
    vocab = tokenizer.get_vocab()
    chars = sorted(t for t in vocab if len(t) == 1)
    if len(vocab) > 300 or len(chars) < len(vocab) - len(tokenizer.all_special_tokens) - 1:
        return ""
    return f"; this tokenizer knows only the characters {''.join(chars)!r} (the testbed model's own)"
