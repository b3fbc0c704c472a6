"""Datasets in the formats people have: chat prompts (TRL's conversational `prompt` / `messages`), verl's
parquet schema, nested column keys, and the errors for bad chat rows and missing parquet columns. Each
test writes a small file in its schema."""

from __future__ import annotations

import json

import pytest

from popo.data.example import column_names
from popo.data.sources import load_examples
from popo.data.templates import render_example, render_messages
from popo.errors import DataError

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_verl_parquet(path, rows=None, *, drop=()) -> str:
    """A parquet file in verl's schema: chat `prompt`, `data_source`, `ability`, `reward_model`, `extra_info`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows or [
        {"data_source": "gsm8k", "ability": "math",
         "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+3?"}],
         "reward_model": {"style": "rule", "ground_truth": "5"}, "extra_info": {"index": 0, "split": "train"}},
        {"data_source": "gsm8k", "ability": "math", "prompt": [{"role": "user", "content": "what is 4+4?"}],
         "reward_model": {"style": "rule", "ground_truth": "8"}, "extra_info": {"index": 1, "split": "train"}},
    ]
    rows = [{k: v for k, v in r.items() if k not in drop} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


class ChatTokenizer:
    chat_template = CHAT_TEMPLATE

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        from jinja2 import Template

        assert tokenize is False
        return Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)


def test_verl_parquet_loads_with_no_options(tmp_path):
    examples, report = load_examples(write_verl_parquet(tmp_path / "train.parquet"))
    assert report.loaded == 2 and [ex.answer for ex in examples] == ["5", "8"]  # reward_model.ground_truth
    first = examples[0]
    assert first.problem == "what is 2+3?"  # the last user turn
    assert first.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+3?"})
    assert first.columns["data_source"] == "gsm8k" and first.columns["extra_info"] == {"index": 0, "split": "train"}
    assert "prompt" not in first.columns  # the prompt goes to reward functions as `prompts`
    assert column_names(examples) == ["ability", "answer", "data_source", "extra_info", "reward_model"]
    # rendered with the tokenizer's chat template and a generation prompt, the template option aside
    assert render_example(first, "qwen-math", ChatTokenizer()) == (
        "<system>be brief</system><user>what is 2+3?</user><assistant>")


def test_trl_conversational_jsonl_with_nested_and_named_keys(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "2+2?"}], "solution": "4", "meta": {"gold": {"value": 4}}},
            {"prompt": [{"role": "user", "content": "3+3?"}], "solution": "6", "meta": {"gold": {"value": 6}}}]
    path = write_jsonl(tmp_path / "trl.jsonl", rows)
    examples, _ = load_examples(path, answer_key="solution")
    assert [ex.answer for ex in examples] == ["4", "6"] and examples[1].problem == "3+3?"
    examples, _ = load_examples(path, answer_key="meta.gold.value")  # nested, and an integer becomes a string
    assert [ex.answer for ex in examples] == ["4", "6"]
    messages_rows = [{"messages": [{"role": "user", "content": "1+1?"}], "answer": 2}]
    examples, _ = load_examples(write_jsonl(tmp_path / "m.jsonl", messages_rows))
    assert examples[0].messages == ({"role": "user", "content": "1+1?"},) and examples[0].answer == "2"


def test_text_problems_keep_their_template(tmp_path):
    examples, _ = load_examples(write_jsonl(tmp_path / "t.jsonl", [{"problem": "1+1?", "answer": "2"}]))
    assert examples[0].messages is None
    assert render_example(examples[0], "plain") == "1+1?"
    assert render_example(examples[0], "Q: {problem}\nA:") == "Q: 1+1?\nA:"
    assert render_messages([{"role": "user", "content": "hi"}]) == "user\nhi\n\nassistant\n"  # no chat template


@pytest.mark.parametrize("prompt, message", [
    ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
     "field 'prompt': message 2 has unknown role 'bot' (expected one of system, user, assistant, tool)"),
    ([{"role": "system", "content": "s"}], "field 'prompt': no user turn (roles: system)"),
    ([{"role": "user"}], "field 'prompt': message 1 is not a {role, content} object"),
    ([{"role": "user", "content": ["part"]}], "field 'prompt': message 1 content must be a string"),
    ([], "field 'prompt' is an empty list of messages"),
])
def test_bad_chat_rows_name_file_line_and_field(tmp_path, prompt, message):
    rows = [{"prompt": [{"role": "user", "content": "ok"}], "answer": "1"}, {"prompt": prompt, "answer": "2"}]
    path = tmp_path / "t.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(DataError) as err:
        load_examples(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)
    examples, report = load_examples(path, on_bad_row="skip")  # or skipped and counted
    assert len(examples) == 1 and report.skipped == 1


@pytest.mark.parametrize("drop, keys, message", [
    (("reward_model",), {}, "no answer column: expected one of answer, reward_model.ground_truth, solution"),
    (("prompt",), {}, "no problem column: expected one of problem, question, prompt, messages"),
    ((), {"answer_key": "reward.ground_truth"}, "data.answer_key='reward.ground_truth' names no column"),
    ((), {"problem_key": "question"}, "data.problem_key='question' names no column"),
])
def test_a_missing_parquet_column_is_an_error_naming_the_file_and_its_columns(tmp_path, drop, keys, message):
    path = write_verl_parquet(tmp_path / "v.parquet", drop=drop)
    with pytest.raises(DataError) as err:
        load_examples(path, **keys)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "(columns: " in str(err.value)


def test_a_verl_parquet_file_and_a_trl_reward_function_train_unchanged(tmp_path, monkeypatch, tiny_testbed, one_thread):
    from popo.build import build_trainer
    from popo.config import load_config

    # a TRL-style reward function, reading verl's columns as keyword arguments
    (tmp_path / "verl_rewards.py").write_text(
        "def short_and_sourced(completions, data_source, reward_model, **kwargs):\n"
        "    return [1.0 if s == 'gsm8k' and len(c) < 100 else 0.0 for c, s in zip(completions, data_source)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # the testbed's character tokenizer knows digits and a few signs only: prompts within them (others are refused)
    rows = [{"data_source": "gsm8k", "ability": "math", "prompt": [{"role": "user", "content": f"{a}+{b}="}],
             "reward_model": {"style": "rule", "ground_truth": str(a + b)}, "extra_info": {"index": i, "split": "train"}}
            for i, (a, b) in enumerate([(2, 3), (4, 4)])]
    data = write_verl_parquet(tmp_path / "train.parquet", rows)
    config = load_config(None, [*tiny_testbed, f"data.source={data}", "data.eval_source=", "train.steps=2",
                                "rollout.prompts_per_step=2", f"train.out_dir={tmp_path / 'run'}",
                                "reward.functions=verl_rewards:short_and_sourced", "algo.reward_threshold=0.5"])
    history = build_trainer(config, log=lambda m: None).run()
    assert [r["step"] for r in history] == [1, 2]
    assert all(r["reward/short_and_sourced/failed"] == 0 for r in history)
    assert history[-1]["reward_mean"] == history[-1]["reward/short_and_sourced"] == 1.0  # 8 tokens < 100 chars
