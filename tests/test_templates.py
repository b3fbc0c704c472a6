"""Prompt templates: named templates, custom {problem} strings, chat rendering and the fallback."""

from __future__ import annotations

import pytest

from popo.data.templates import BOXED_INSTRUCTION, TEMPLATES, render_prompt

PROBLEM = r"Compute $\frac{1}{2} + \{x\}$ where $f(x) = {x}^{2}$."


class RecordingTokenizer:
    """Stands in for a tokenizer with a chat template; records the call."""

    chat_template = "{{ messages }}"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        return "|".join(f"<{m['role']}>{m['content']}" for m in messages) + "|<assistant>"


class BaseTokenizer:
    chat_template = None

    def apply_chat_template(self, *args, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("a tokenizer without a chat template must not be asked to render chat")


def test_template_names():
    assert set(TEMPLATES) == {"qwen-math", "qwen-boxed", "r1", "plain"}


def test_qwen_math_with_chat_template():
    tok = RecordingTokenizer()
    out = render_prompt(PROBLEM, "qwen-math", tok)
    messages, tokenize, add_generation_prompt = tok.calls[0]
    assert messages == [
        {"role": "system", "content": BOXED_INSTRUCTION},
        {"role": "user", "content": PROBLEM},
    ]
    assert tokenize is False and add_generation_prompt is True
    assert out == f"<system>{BOXED_INSTRUCTION}|<user>{PROBLEM}|<assistant>"
    assert BOXED_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."


def test_qwen_boxed_has_no_system_message():
    tok = RecordingTokenizer()
    render_prompt(PROBLEM, "qwen-boxed", tok)
    messages = tok.calls[0][0]
    assert messages == [{"role": "user", "content": PROBLEM + "\n" + BOXED_INSTRUCTION}]


@pytest.mark.parametrize("tokenizer", [None, BaseTokenizer()])
def test_chat_fallback_without_chat_template(tokenizer):
    assert render_prompt(PROBLEM, "qwen-math", tokenizer) == (
        f"system\n{BOXED_INSTRUCTION}\n\nuser\n{PROBLEM}\n\nassistant\n"
    )
    assert render_prompt(PROBLEM, "qwen-boxed", tokenizer) == (
        f"user\n{PROBLEM}\n{BOXED_INSTRUCTION}\n\nassistant\n"
    )


def test_real_transformers_tokenizer_chat_template():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    out = render_prompt(PROBLEM, "qwen-math", tok)
    assert out == f"<|system|>{BOXED_INSTRUCTION}\n<|user|>{PROBLEM}\n<|assistant|>"


def test_r1_is_plain_text_with_tags_and_box():
    tok = RecordingTokenizer()
    out = render_prompt(PROBLEM, "r1", tok)
    assert not tok.calls  # plain text, no chat template
    assert PROBLEM in out
    for marker in ("<think>", "</think>", "<answer>", "</answer>", "\\boxed{"):
        assert marker in out
    assert out.endswith("Assistant: <think>")


def test_plain_is_the_problem():
    assert render_prompt(PROBLEM, "plain", RecordingTokenizer()) == PROBLEM


def test_custom_template_with_braces_everywhere():
    template = "Q: {problem}\nA (in \\boxed{} form, {not a field}):"
    out = render_prompt(PROBLEM, template)
    assert out == f"Q: {PROBLEM}\nA (in \\boxed{{}} form, {{not a field}}):"
    # a problem that itself contains the placeholder text is inserted verbatim
    assert render_prompt("what is {problem}?", "<{problem}>") == "<what is {problem}?>"


@pytest.mark.parametrize("name, suggestion", [("qwen_math", "qwen-math"), ("qwen-boxd", "qwen-boxed"), ("R1", "r1")])
def test_unknown_template_suggests_the_closest(name, suggestion):
    with pytest.raises(ValueError) as err:
        render_prompt(PROBLEM, name)
    message = str(err.value)
    assert f"Did you mean {suggestion!r}?" in message
    for valid in TEMPLATES:
        assert valid in message


def test_unknown_template_without_close_match():
    with pytest.raises(ValueError, match="Valid names: plain, qwen-boxed, qwen-math, r1") as err:
        render_prompt(PROBLEM, "zzzzzzzzzzzz")
    assert "Did you mean" not in str(err.value)
