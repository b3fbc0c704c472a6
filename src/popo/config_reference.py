"""The configuration reference (`popo config`, and docs/configuration.md): every key with its default and
the docstring written under its dataclass field."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import get_type_hints

from popo.config import Config
from popo.field_rules import choices, range_text


def loss_settings(loss: str, *, name: str, prefix: str = "") -> type:
    """A dataclass of the settings the registered `loss` reads (its `Algorithm.settings` class), each as
    ``prefix + key`` with that class's type, default and help text (its rule in words: the integrations check
    the values with popo's own `validate`, and TRL's argument parser takes only ``help`` metadata): the one source of the TRL bridge's
    `POPOConfig` fields and the verl plugin's `POPOVerlConfig` (no field list is typed out twice)."""
    from popo.algorithms import get_algorithm

    declared = get_algorithm(loss).settings
    hints, docs, defaults = get_type_hints(declared), field_docs(declared), declared()
    return dataclasses.make_dataclass(name, [
        (prefix + f.name, hints[f.name],
         dataclasses.field(default=getattr(defaults, f.name), metadata={"help": _help(docs[f.name], f, hints[f.name])}))
        for f in dataclasses.fields(declared)])


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass and of the dataclasses it derives from."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({m.group(1): " ".join(m.group(2).split()) for m in re.finditer(
                r'^\s+(\w+): [^\n]*\n\s+"""(.*?)"""', inspect.getsource(klass), flags=re.M | re.S)})
    return docs


def _rule(f: dataclasses.Field, hint: object) -> str:
    """A field's rule as the reference prints it: its choices or its range ('' for neither)."""
    allowed = choices(hint)
    return f"One of {', '.join(map(str, allowed))}." if allowed else (
        f"Must be {range_text(f.metadata)}." if range_text(f.metadata) else "")


def _help(doc: str, f: dataclasses.Field, hint: object) -> str:
    return " ".join(part for part in (doc, _rule(f, hint)) if part)


def _readers(key: str) -> str:
    """For an `algo.*` key: the registered losses whose settings declare it (for `name`: every valid name)."""
    from popo.algorithms import LOSSES, PRESETS

    if key == "name":
        return f"One of {', '.join(PRESETS)}."
    names = [name for name, entry in LOSSES.items() if key in entry.setting_names]
    return f"Read by {', '.join(names)}." if names else ""


def _reference_rows(cls: type, prefix: str) -> list[str]:
    docs, hints, rows = field_docs(cls), get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(_reference_rows(hints[f.name], f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        readers = _readers(f.name) if prefix == "algo." else ""
        rows.append(f"| `{prefix}{f.name}` | `{default}` | {_help(docs.get(f.name, ''), f, hints[f.name])}"
                    f"{' ' + readers if readers else ''} |")
    return rows


def reference_markdown() -> str:
    """The configuration reference table, generated from the dataclasses (docs/configuration.md embeds it)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section in dataclasses.fields(Config):
        cls = section.type if isinstance(section.type, type) else get_type_hints(Config)[section.name]
        lines.extend(_reference_rows(cls, f"{section.name}."))
    return "\n".join(lines)
