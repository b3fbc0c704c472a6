"""Rules on configuration fields, stated where a field is declared.

A choice is the field's `Literal` type (`weight_mode: WeightMode`, with `WeightMode = Literal["softmax",
"uniform"]`); a range is its default wrapped in `ranged` (`alpha: float = ranged(0.1, low=0.0)`). Nothing
else restates them: `popo.config_checks.check_fields` applies both to any configuration dataclass (popo's
sections, each loss's settings, the settings TRL's and verl's bridges generate from them), the command line
parses a `Literal` as its values' type, and the configuration reference prints them.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal, get_args, get_origin


def ranged(default: Any, *, low: float | None = None, high: float | None = None, open_low: bool = False) -> Any:
    """A dataclass field with `default` whose value must lie in [low, high] ((low, high] with `open_low`);
    None leaves that side unbounded."""
    return field(default=default, metadata={"range": (low, high, open_low)})


def choices(hint: Any) -> tuple[Any, ...] | None:
    """The values a `Literal` type (or an optional one) allows; None for any other type."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    for arg in get_args(hint):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def range_text(metadata: Any) -> str:
    """A field's range as messages print it ('' when it has none): '>= 0', '> 0', 'in [0, 1]', ..."""
    if "range" not in metadata:
        return ""
    low, high, open_low = metadata["range"]
    if high is None:
        return f"{'>' if open_low else '>='} {low:g}"
    if low is None:
        return f"<= {high:g}"
    return f"in {'(' if open_low else '['}{low:g}, {high:g}]"


def in_range(value: Any, metadata: Any) -> bool:
    """Whether `value` lies in the field's range (always, for a field without one)."""
    if "range" not in metadata:
        return True
    low, high, open_low = metadata["range"]
    above = low is None or (value > low if open_low else value >= low)
    return above and (high is None or value <= high)


def field_problems(obj: Any, prefix: str = "") -> list[str]:
    """Every value of the dataclass `obj` that breaks its field's type, choice or range, one line each naming
    ``prefix + field`` (nested dataclasses included, each with its own prefix)."""
    import difflib
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    hints, problems = get_type_hints(type(obj)), []
    for f in fields(obj):
        value, hint, where = getattr(obj, f.name), hints[f.name], prefix + f.name
        if is_dataclass(value):
            problems.extend(field_problems(value, f"{where}."))
            continue
        allowed = choices(hint)
        if allowed is not None and value not in allowed and not (value is None and type(None) in get_args(hint)):
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
            problems.append(f"{where}={value!r} is not valid" + (f" (did you mean '{close[0]}'?)" if close else
                            f" (valid: {', '.join(str(a) for a in allowed)})"))
        elif not _has_type(value, hint):
            problems.append(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
        elif not in_range(value, f.metadata):
            problems.append(f"{where} must be {range_text(f.metadata)}, got {value}")
    return problems


def _has_type(value: Any, hint: Any) -> bool:
    """Whether `value` has the plain type `hint` (bool, int, float, str; an int is a float, a bool neither);
    other types are not checked here."""
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True
