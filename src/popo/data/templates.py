"""Prompt templates: how a problem becomes the text the policy continues.

Named templates (``TEMPLATES``):

``qwen-math``
    chat: system "Please reason step by step, and put your final answer within \\boxed{}." and the
    problem as the user message (the Qwen2.5-Math evaluation prompt).
``qwen-boxed``
    chat: no system message; user message = problem + "\\nPlease reason step by step, and put your final
    answer within \\boxed{}.".
``r1``
    plain text (no chat template), in the style of R1-Zero training: an instruction to think inside
    ``<think> </think>`` and answer inside ``<answer> </answer>`` with the final result in ``\\boxed{}``
    (the reward still reads the last box); the prompt ends with ``Assistant: <think>`` so the completion
    starts inside the reasoning.
``plain``
    the problem text as is.

Any other string containing ``{problem}`` is a custom plain-text template; the placeholder is filled
with ``str.replace`` (not ``str.format``), so braces in problems and templates are safe.

Chat templates use ``tokenizer.apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)`` when the tokenizer has a chat template. Without a tokenizer, or with one
that has no chat template (a base model), they fall back to this documented rendering::

    system\\n<system message>\\n\\nuser\\n<user message>\\n\\nassistant\\n

(the system block is left out when there is no system message).

A dataset row whose prompt is already a chat (``Example.messages``) is rendered as it stands, with the
tokenizer's chat template and ``add_generation_prompt=True`` (:func:`render_messages`); the template
option applies to text problems only (:func:`render_example`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = ["TEMPLATES", "Template", "render_example", "render_messages", "render_prompt", "BOXED_INSTRUCTION"]

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PLACEHOLDER = "{problem}"


@dataclass(frozen=True)
class Template:
    """A named prompt template. ``user`` contains ``{problem}``; ``chat`` says whether it is rendered as
    chat messages (system + user) or as plain text."""

    name: str
    user: str
    system: str | None = None
    chat: bool = True
    description: str = ""

    def user_text(self, problem: str) -> str:
        return self.user.replace(PLACEHOLDER, problem)


_R1_PROMPT = (
    "A user asks a math question and the assistant solves it. The assistant first works through the "
    "reasoning inside <think> </think> tags, then states the final answer inside <answer> </answer> "
    "tags, writing the final result as \\boxed{...} within the answer tags, for example "
    "<think> reasoning </think> <answer> The answer is \\boxed{42}. </answer>\n"
    "User: {problem}\n"
    "Assistant: <think>"
)

TEMPLATES: dict[str, Template] = {
    "qwen-math": Template(
        name="qwen-math",
        user=PLACEHOLDER,
        system=BOXED_INSTRUCTION,
        description="chat; system asks for step-by-step reasoning and a \\boxed{} answer",
    ),
    "qwen-boxed": Template(
        name="qwen-boxed",
        user=PLACEHOLDER + "\n" + BOXED_INSTRUCTION,
        description="chat; no system message, the boxed instruction follows the problem",
    ),
    "r1": Template(
        name="r1",
        user=_R1_PROMPT,
        chat=False,
        description="plain text; <think>/<answer> tags, answer in \\boxed{} inside <answer>",
    ),
    "plain": Template(name="plain", user=PLACEHOLDER, chat=False, description="the problem text as is"),
}


def _resolve(template: str) -> Template:
    if template in TEMPLATES:
        return TEMPLATES[template]
    if PLACEHOLDER in template:
        return Template(name="custom", user=template, chat=False, description="custom plain-text template")
    names = ", ".join(sorted(TEMPLATES))
    close = difflib.get_close_matches(template, list(TEMPLATES), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown prompt template {template!r}.{hint} Valid names: {names}; "
        "or pass a custom template string containing {problem}."
    )


def _fallback_chat(messages: list[dict[str, str]]) -> str:
    parts = [f"{m['role']}\n{m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nassistant\n"


def render_prompt(problem: str, template: str = "qwen-math", tokenizer=None) -> str:
    """The prompt text for ``problem`` under ``template`` (a name in ``TEMPLATES`` or a string with
    ``{problem}``). Chat templates use the tokenizer's chat template when it has one."""
    if not isinstance(problem, str):
        raise TypeError(f"problem must be a string, got {type(problem).__name__}")
    spec = _resolve(template)
    user = spec.user_text(problem)
    if not spec.chat:
        return user
    messages = []
    if spec.system is not None:
        messages.append({"role": "system", "content": spec.system})
    messages.append({"role": "user", "content": user})
    return render_messages(messages, tokenizer)


def render_messages(messages, tokenizer=None) -> str:
    """Chat messages (``{role, content}`` dicts) as prompt text, ending where the assistant's reply starts:
    the tokenizer's chat template with ``add_generation_prompt=True`` when it has one, else the documented
    fallback rendering."""
    messages = [dict(m) for m in messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _fallback_chat(messages)


def render_example(example, template: str = "plain", tokenizer=None) -> str:
    """The prompt of a dataset example: its chat ``messages`` rendered as they stand when it has them, else
    its problem under ``template`` (``plain``: the problem text as is)."""
    if getattr(example, "messages", None):
        return render_messages(example.messages, tokenizer)
    return example.problem if template == "plain" else render_prompt(example.problem, template, tokenizer)
