"""The configuration reference (`popo config`, and docs/configuration.md): every key with its default and
the docstring written under its dataclass field."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import get_type_hints

from popo.config import Config


def loss_settings(loss: str, *, name: str, prefix: str = "") -> type:
    """A dataclass of the `algo.*` settings the registered `loss` reads (`Algorithm.settings`), each as
    ``prefix + key`` with `AlgoConfig`'s type, default and help text: the one source of the TRL bridge's
    `POPOConfig` fields and the verl plugin's `POPOVerlConfig` (no field list is typed out twice)."""
    from popo.algo_config import AlgoConfig
    from popo.algorithms import get_algorithm

    hints, docs, defaults = get_type_hints(AlgoConfig), field_docs(AlgoConfig), AlgoConfig()
    return dataclasses.make_dataclass(name, [
        (prefix + key, hints[key], dataclasses.field(default=getattr(defaults, key), metadata={"help": docs[key]}))
        for key in get_algorithm(loss).settings])


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass."""
    source = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(
        r'^\s+(\w+): [^\n]*\n\s+"""(.*?)"""', source, flags=re.M | re.S)}


def _reference_rows(cls: type, prefix: str) -> list[str]:
    docs, hints, rows = field_docs(cls), get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(_reference_rows(hints[f.name], f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{prefix}{f.name}` | `{default}` | {docs.get(f.name, '')} |")
    return rows


def reference_markdown() -> str:
    """The configuration reference table, generated from the dataclasses (docs/configuration.md embeds it)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section in dataclasses.fields(Config):
        cls = section.type if isinstance(section.type, type) else get_type_hints(Config)[section.name]
        lines.extend(_reference_rows(cls, f"{section.name}."))
    return "\n".join(lines)
