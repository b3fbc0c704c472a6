"""Issue 37, inputs: text the policy's tokenizer cannot represent and huge lines, through the user's real path
(the shipped warm start as `popo train` installs it, its tokenizer loaded with `AutoTokenizer`, and the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from popo.config import load_config
from popo.data.prepare import fit_prompts, load_examples_for
from popo.data.sources import load_examples
from popo.errors import DataError

UNREPRESENTABLE = "What is 1+1? \\boxed{}"  # the prompt: the model saw "hatis1+1?boxed"
HUGE = "1+" * 1_500_000 + "1="  # 3 million characters the tokenizer does represent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the testbed cache folder, the warm start in it) as `popo train` installs it with default settings."""
    from popo.loading import resolve_model_path

    cache = tmp_path_factory.mktemp("testbed-cache")
    path = resolve_model_path(load_config(None, [f"testbed.cache_dir={cache}"]), log=lambda line: None)
    assert "shipped" not in path and Path(path).parent == cache  # a copy of the shipped one, installed
    return cache, Path(path)


@pytest.fixture(scope="module")
def tokenizer(installed):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(installed[1])


def write_rows(path: Path, problems: list[str]) -> Path:
    path.write_text("".join(json.dumps({"problem": p, "answer": "2"}) + "\n" for p in problems))
    return path


def fit(path: Path, tokenizer, *overrides: str, log=print):
    config = load_config(None, [f"data.source={path}", *overrides])
    examples = load_examples_for(config, str(path), split="train", log=log)
    return fit_prompts(config, examples, tokenizer, context=128, source=str(path), split="train", log=log)


def test_the_installed_tokenizer_drops_characters_and_the_guard_names_them(tmp_path, tokenizer):
    ids = tokenizer(UNREPRESENTABLE, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) != UNREPRESENTABLE  # the premise: dropped silently, no unknown token
    path = write_rows(tmp_path / "own.jsonl", ["1+1=", UNREPRESENTABLE])
    with pytest.raises(DataError) as err:
        fit(path, tokenizer)
    message = str(err.value)
    assert message.startswith(f"{path}:2: field 'problem': characters the tokenizer cannot represent: ")
    assert all(repr(ch) in message for ch in (" ", "W", "\\", "{", "}")) and "'h'" not in message.split(";")[0]
    logged: list[str] = []
    kept, prompts = fit(path, tokenizer, "data.on_bad_row=skip", log=logged.append)
    assert prompts == ["1+1="] and any("skipped 1 prompts with characters" in line for line in logged)


def test_a_huge_line_is_refused_before_it_is_tokenized(tmp_path, tokenizer, monkeypatch):
    path = write_rows(tmp_path / "huge.jsonl", ["1+1=", HUGE, "2+2="])
    longest: list[int] = []
    real_call = type(tokenizer).__call__

    def spy(self, text, *args, **kwargs):
        longest.append(max(map(len, [text] if isinstance(text, str) else text), default=0))
        return real_call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    with pytest.raises(DataError) as err:
        fit(path, tokenizer)
    assert str(err.value).startswith(f"{path}:2: field 'problem': the prompt is {len(HUGE):,} characters with the "
                                     "template, more than the limit of 104 tokens (model context 128 - "
                                     "rollout.max_new_tokens 24) can hold")
    logged: list[str] = []
    kept, prompts = fit(path, tokenizer, "data.on_bad_row=skip", log=logged.append)
    assert prompts == ["1+1=", "2+2="] and any("skipped 1 prompts longer than 104 tokens" in x for x in logged)
    assert max(longest) < 1000  # the huge prompt never reached the tokenizer


def test_popo_train_refuses_the_prompt_naming_file_line_and_field(tmp_path, installed):
    data = write_rows(tmp_path / "data.jsonl", [UNREPRESENTABLE])
    popo = Path(sys.executable).parent / "popo"  # the console script, as a user types it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(popo), "train", f"data.source={data}", f"train.out_dir={tmp_path / 'run'}",
                           f"testbed.cache_dir={installed[0]}", "model.device=cpu", "train.steps=2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = "field 'problem': characters the tokenizer cannot represent: ' ', 'W', '\\\\', '{', '}'"
    assert f"error: {data}:1: {expected}" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_jsonl_line_over_the_byte_cap_is_a_bad_row_read_past(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"problem": "1+1=", "answer": "2"}) + "\n"
                    + json.dumps({"problem": "1+" * 5000 + "1=", "answer": "2"}) + "\n\n"
                    + json.dumps({"problem": "2+2=", "answer": "4"}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: line is 10,0\d\d bytes, over the limit of 1,000 bytes a row "):
        load_examples(path, max_line_bytes=1000)
    examples, report = load_examples(path, max_line_bytes=1000, on_bad_row="skip")
    assert [e.problem for e in examples] == ["1+1=", "2+2="] and report.skipped_by_reason == {"too_long": 1}
    assert report.locations[examples[1].id] == f"{path}:4"  # lines after it keep their numbers
    assert len(load_examples(path)[0]) == 3  # the default cap holds any reasonable row


def test_only_characters_the_tokenizer_loses_are_named():
    """No false alarm: a byte-level vocabulary loses nothing, a normalised prompt loses nothing, and characters
    that occur only inside added tokens (a chat template's markers) are not blamed."""
    from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    from popo.data.prompt_checks import unrepresentable

    corpus, markers = ["What is 1+1? Put your final answer within \\boxed{}."] * 20, ["<|im_start|>", "<|im_end|>"]
    prompts = ["<|im_start|>What is 1+1?<|im_end|>", "<|im_start|>Hi: 1+1?<|im_end|>", "Ünï — 日本 \\boxed{x}"]
    lost = {}
    for name, core in (("byte-level", ByteLevelBPETokenizer()), ("sentencepiece", SentencePieceBPETokenizer())):
        core.train_from_iterator(corpus, vocab_size=300, special_tokens=["<unk>", *markers])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                            additional_special_tokens=markers)
        lost[name] = unrepresentable(tokenizer, prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"])
    assert lost["byte-level"] == {}
    assert lost["sentencepiece"] == {1: "':', 'H'", 2: "'Ü', 'ï', '—', '日', '本'"}  # not '<', '|', '_' of the markers
    core = ByteLevelBPETokenizer()
    core.train_from_iterator(corpus, vocab_size=300)
    core.normalizer = normalizers.NFKC()  # "ﬁ" becomes "fi": the text changes, no character is lost
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    assert unrepresentable(tokenizer, ["ﬁve"], tokenizer(["ﬁve"], add_special_tokens=False)["input_ids"]) == {}
