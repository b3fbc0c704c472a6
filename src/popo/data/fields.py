"""The fields of one dataset row: the problem (text or chat messages), the gold answers and the id, each
checked, with nested keys (``reward_model.ground_truth``). A bad field raises :class:`RowError` with the
reason it is counted under and a message naming the field; :mod:`popo.data.sources` adds file and line."""

from __future__ import annotations

import math

__all__ = ["ANSWER_KEYS", "CHAT_ROLES", "PROBLEM_KEYS", "RowError", "answers_of", "problem_of", "row_id"]

PROBLEM_KEYS = ("problem", "question", "prompt", "messages")
ANSWER_KEYS = ("answer", "reward_model.ground_truth", "solution")  # the last one: its last \\boxed{}
CHAT_ROLES = ("system", "user", "assistant", "tool")
CHAT_KEYS = ("prompt", "messages")  # columns that may hold a chat (any column named by data.problem_key may)


class RowError(Exception):
    """A bad row: ``reason`` is what it is counted under when skipped, ``message`` names the field."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _number_to_str(value: int | float, name: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RowError("bad_type", f"field '{name}' is not a finite number ({value!r})")
        if value.is_integer():
            return str(int(value))
    return str(value)


def _get(row: dict, name: str):
    """The field ``name`` of a row (None when absent); ``a.b`` is ``row["a"]["b"]`` unless ``a.b`` is a column."""
    if name in row or "." not in name:
        return row.get(name)
    value = row
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text_field(row: dict, name: str, numbers: bool = False) -> str:
    """A required non-empty string field; with ``numbers`` an int or float is converted to a string."""
    value = _get(row, name)
    if value is None:
        raise RowError("missing_field", f"field '{name}' is missing")
    if isinstance(value, bool):
        raise RowError("bad_type", f"field '{name}' must be a string, got bool")
    if numbers and isinstance(value, (int, float)):
        value = _number_to_str(value, name)
    if not isinstance(value, str):
        raise RowError("bad_type", f"field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError("empty_field", f"field '{name}' is empty")
    return value


def _answer_list(row: dict, name: str) -> list[str]:
    """One answer field: a string/number, or a non-empty list of them."""
    value = _get(row, name)
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowError("empty_field", f"field '{name}' is an empty list")
        return [_text_field({name: v}, name, numbers=True).strip() for v in value]
    return [_text_field(row, name, numbers=True).strip()]


def problem_of(row: dict, problem_key: str | None) -> tuple[str, tuple[dict, ...] | None, str]:
    """(problem text, chat messages or None, the key it was read from)."""
    keys = [problem_key] if problem_key is not None else [k for k in PROBLEM_KEYS if _get(row, k) is not None]
    if not keys:
        raise RowError("missing_field", "field 'problem' is missing (also looked for 'question', 'prompt', "
                                         "'messages')")
    key = keys[0]
    value = _get(row, key)
    if isinstance(value, (list, tuple)) and (key in CHAT_KEYS or problem_key is not None):
        messages = _messages(value, key)
        return [m["content"] for m in messages if m["role"] == "user"][-1], messages, key
    return _text_field(row, key), None, key


def _messages(value: list | tuple, key: str) -> tuple[dict, ...]:
    """A chat prompt: {role, content} messages with known roles and at least one user turn."""
    if not value:
        raise RowError("empty_field", f"field '{key}' is an empty list of messages")
    out = []
    for n, message in enumerate(value, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError("bad_chat", f"field '{key}': message {n} is not a {{role, content}} object")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise RowError("bad_chat", f"field '{key}': message {n} has unknown role {role!r} "
                                        f"(expected one of {', '.join(CHAT_ROLES)})")
        if not isinstance(content, str):
            raise RowError("bad_chat", f"field '{key}': message {n} content must be a string, "
                                        f"got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in out):
        raise RowError("bad_chat", f"field '{key}': no user turn (roles: {', '.join(m['role'] for m in out)})")
    return tuple(out)


def answers_of(row: dict, answer_key: str | None) -> list[str]:
    if answer_key is not None:
        answers = _answer_list(row, answer_key)
    elif _get(row, "answer") is not None:
        answers = _answer_list(row, "answer")
    elif _get(row, "reward_model.ground_truth") is not None:  # verl's parquet schema
        answers = _answer_list(row, "reward_model.ground_truth")
    elif row.get("solution") is not None:
        from popo.rewards import last_boxed_content

        solution = _text_field(row, "solution")
        boxed = last_boxed_content(solution)
        if boxed is None:
            raise RowError("no_boxed_answer", "field 'solution' has no complete \\boxed{} answer")
        answers = [boxed]
    else:
        raise RowError("missing_field", "field 'answer' is missing (and there is no 'reward_model.ground_truth' "
                                         "or 'solution')")
    alternatives = row.get("answer_alternatives")
    if alternatives is not None:
        if not isinstance(alternatives, (list, tuple)):
            raise RowError(
                "bad_type",
                f"field 'answer_alternatives' must be a list, got {type(alternatives).__name__}",
            )
        if alternatives:
            answers += _answer_list(row, "answer_alternatives")
    unique: list[str] = []
    for a in answers:
        if a not in unique:
            unique.append(a)
    return unique


def row_id(row: dict, default: str) -> str:
    value = row.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):  # ints are common hub ids
        raise RowError("bad_type", f"field 'id' must be a string or an integer, got {type(value).__name__}")
    value = str(value).strip()
    if not value:
        raise RowError("empty_field", "field 'id' is empty")
    return value
