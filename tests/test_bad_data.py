"""Bad inputs are caught before any model loads, with one clear line naming file, line and field (or,
with `data.on_bad_row=skip`, skipped and counted in the run's log); bad config values are rejected with
the closest valid value suggested. Prompts longer than the cap are caught once rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import popo.loading
from popo.data.prepare import fit_prompts
from popo.cli import main
from popo.config import ConfigError, load_config
from popo.data import DataError, Example
from popo.testbed.tokenizer import build_tokenizer
from popo.build import build_trainer

GOOD = {"problem": "1+1=", "answer": "2"}


class ModelLoaded(Exception):
    """Raised by the patched model loader: reaching it means the input checks passed."""


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test's run at the first attempt to build or load a model."""
    def refuse(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(popo.loading, "resolve_model_path", refuse)
    monkeypatch.setattr(popo.loading, "load_policy", refuse)


def write_lines(path: Path, lines: list) -> Path:
    chunks = [x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode() for x in lines]
    path.write_bytes(b"\n".join(chunks) + b"\n")
    return path


def train_args(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    return ["train", f"data.source={source}", "data.eval_source=", f"train.out_dir={tmp_path / 'run'}",
            "model.device=cpu", *extra]


# one bad row (line 3) after two good ones: the message that names it
BAD_ROWS = [
    ("malformed JSON", '{"problem": "2+2=", "answer": ', "malformed JSON (Expecting value at column"),
    ("missing field", {"problem": "2+2="}, "field 'answer' is missing"),
    ("empty field", {"problem": "   ", "answer": "4"}, "field 'problem' is empty"),
    ("wrong type", {"problem": "2+2=", "answer": [4, {"x": 1}]}, "field 'answer' must be a string, got dict"),
    ("wrong type of id", {"id": 1.5, "problem": "2+2=", "answer": "4"}, "field 'id' must be a string or an integer"),
    ("not UTF-8", b'{"problem": "2\xff2=", "answer": "4"}', "line is not valid UTF-8 (byte 15: invalid start byte)"),
    ("duplicated id", {"id": "a", "problem": "2+2=", "answer": "4"}, "field 'id': duplicate id 'a' (first at"),
    ("not an object", '"2+2="', "row is not a JSON object (got str)"),
]


@pytest.mark.parametrize("name, row, message", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_row_is_one_clear_error_before_any_model_loads(tmp_path, capsys, no_model, name, row, message):
    data = write_lines(tmp_path / "data.jsonl", [GOOD | {"id": "a"}, GOOD | {"id": "b"}, row])
    assert main(train_args(tmp_path, data)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}:3: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_skip_mode_counts_every_bad_row_in_the_log(tmp_path, capsys, no_model):
    rows = [GOOD | {"id": "a"}] + [row for _, row, _ in BAD_ROWS] + ["", GOOD | {"id": "z"}]
    data = write_lines(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(ModelLoaded):  # the data passed: the run went on to load the model
        main(train_args(tmp_path, data, "data.on_bad_row=skip"))
    out = capsys.readouterr().out
    assert f"data: skipped {len(BAD_ROWS)} bad rows in {data}" in out
    assert ("bad_type=2, duplicate_id=1, empty_field=1, malformed_json=1, missing_field=1, not_an_object=1, "
            "not_utf8=1") in out


def test_empty_and_all_bad_files_are_errors_in_both_modes(tmp_path, capsys, no_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = write_lines(tmp_path / "bad.jsonl", [{"problem": "x"}, "{"])
    for mode in ("error", "skip"):
        assert main(train_args(tmp_path, empty, f"data.on_bad_row={mode}")) == 2
        assert capsys.readouterr().err == f"error: {empty}: no rows (the source is empty)\n"
    assert main(train_args(tmp_path, bad, "data.on_bad_row=skip")) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: no valid rows (2 skipped")


# ---------------------------------------------------------------------------------------------------
# Over-long prompts: checked once the template is applied, against the config cap and the model's context
# ---------------------------------------------------------------------------------------------------


def long_prompt_config(source: Path, *extra: str):
    return load_config(None, [f"data.source={source}", "rollout.max_new_tokens=8", *extra])


@pytest.fixture
def long_prompt_data(tmp_path):
    rows = [GOOD | {"id": "a"}, {"id": "b", "problem": "1+" * 30 + "1=", "answer": "31"}, GOOD | {"id": "c"}]
    return write_lines(tmp_path / "long.jsonl", rows), [Example(r["problem"], r["answer"], r["id"]) for r in rows]


@pytest.mark.parametrize("overrides, limit, why", [
    (["data.max_prompt_tokens=40"], 40, "data.max_prompt_tokens=40"),
    (["data.max_prompt_tokens=512"], 56, "model context 64 - rollout.max_new_tokens 8"),
])
def test_over_long_prompt_names_file_line_and_field(long_prompt_data, overrides, limit, why):
    path, examples = long_prompt_data
    config = long_prompt_config(path, *overrides)
    with pytest.raises(DataError) as err:
        fit_prompts(config, examples, build_tokenizer(), context=64, source=str(path), split="train",
                    log=print)
    assert str(err.value) == (f"{path}:2: field 'problem': the prompt is 62 tokens with the template, over the "
                              f"limit of {limit} ({why}); data.on_bad_row=skip drops such prompts and counts them")


def test_over_long_prompt_is_skipped_and_counted(long_prompt_data):
    path, examples = long_prompt_data
    logged: list[str] = []
    kept, prompts = fit_prompts(long_prompt_config(path, "data.on_bad_row=skip"), examples, build_tokenizer(),
                                context=64, source=str(path), split="train", log=logged.append)
    assert [e.id for e in kept] == ["a", "c"] and prompts == ["1+1=", "1+1="]
    assert len(logged) == 1 and logged[0].startswith(f"data: skipped 1 prompts longer than 56 tokens in {path}")


def test_no_room_for_a_prompt_is_a_setup_error(long_prompt_data):
    path, examples = long_prompt_data
    from popo.build import SetupError

    with pytest.raises(SetupError, match="rollout.max_new_tokens=64 leaves no room for a prompt in the "
                                         "model's context of 64 tokens"):
        fit_prompts(long_prompt_config(path, "rollout.max_new_tokens=64"), examples, build_tokenizer(),
                    context=64, source=str(path), split="train", log=print)


def test_trainer_checks_prompt_length_against_the_testbed_context(tmp_path, tiny_testbed, one_thread,
                                                                  long_prompt_data):
    path, _ = long_prompt_data
    config = load_config(None, [*tiny_testbed, f"data.source={path}", "data.eval_source=",
                                "data.max_prompt_tokens=20", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError, match=rf"^{path}:2: field 'problem': the prompt is 62 tokens"):
        build_trainer(config, log=lambda message: None)


# ---------------------------------------------------------------------------------------------------
# Bad config values: rejected before any model loads, with the closest valid value suggested
# ---------------------------------------------------------------------------------------------------

BAD_CONFIG = [
    (["optim.lr=-1e-6"], "optim.lr must be positive, got -1e-06"),
    (["optim.lr=0"], "optim.lr must be positive, got 0.0"),
    (["algo.tau=1.5"], "algo.tau must be in [0, 1], got 1.5"),
    (["algo.tau=-0.01"], "algo.tau must be in [0, 1], got -0.01"),
    (["algo.name=grpo", "rollout.group_size=1"], "algo.name=grpo needs rollout.group_size >= 2"),
    (["algo.name=dr-grpo", "rollout.group_size=1"], "algo.name=dr-grpo needs rollout.group_size >= 2"),
    (["algo.name=grop"], "algo.name='grop' is not valid (did you mean 'grpo'?)"),
    (["algo.name=popo_frozen"], "algo.name='popo_frozen' is not valid (did you mean 'popo-frozen'?)"),
    (["optim.lrr=1e-6"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["algo.taus=0.9"], "unknown config key 'algo.taus' (did you mean 'algo.tau'?)"),
    (["optimizer.lr=1"], "unknown config key 'optimizer' (did you mean 'optim'?)"),
    (["optim.lr=fast"], "optim.lr: cannot read 'fast' as float"),
    (["optim.lr=nan"], "optim.lr: cannot read 'nan' as float"),
    (["data.on_bad_row=skipp"], "data.on_bad_row='skipp' is not valid (did you mean 'skip'?)"),
    (["data.max_prompt_tokens=0"], "data.max_prompt_tokens must be >= 1, got 0"),
    (["train.save_every=-1"], "train.save_every must be >= 0, got -1"),
    (["optim.betas=[0.9, 1.0]"], "optim.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens must be >= 1"),
    (["train.max_bad_steps=0"], "train.keep_last and max_bad_steps must be >= 1"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIG, ids=[" ".join(b[0]) for b in BAD_CONFIG])
def test_bad_config_value_rejected_before_any_model_loads(tmp_path, capsys, no_model, overrides, message):
    assert main(["train", *overrides, f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert not (tmp_path / "run").exists()


def test_bad_yaml_values_are_rejected_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo:\n  name: popo\n  tau: .nan\noptim:\n  lr: 1e-4\n")
    with pytest.raises(ConfigError, match=r"algo.tau must be in \[0, 1\], got nan"):
        load_config(path)
    path.write_text("algo:\n  nmae: grpo\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'algo.nmae' \(did you mean 'algo.name'\?\)"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping of sections"):
        load_config(path)
