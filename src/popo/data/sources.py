"""Load problems and gold answers from local files or Hugging Face hub datasets, with strict row checks.

Sources
    * a local ``.jsonl`` file (one JSON object per line; blank lines are ignored),
    * a local ``.json`` file (a list of objects, or an object holding that list under ``data``,
      ``examples`` or ``rows``),
    * a local ``.parquet`` file,
    * otherwise a hub dataset id, loaded with ``datasets.load_dataset(source, config, split=split)``.

Columns
    * problem: ``problem_key``, else the first of ``problem`` / ``question`` / ``prompt`` / ``messages``
      present. A chat prompt (a list of ``{role, content}`` messages in ``prompt``, ``messages`` or the
      column ``problem_key`` names, as in TRL's conversational format and verl's parquet files) becomes
      ``Example.messages`` (rendered later with the tokenizer's chat template) and ``Example.problem`` is
      its last user turn; roles are system, user, assistant and tool, and at
      least one user turn is required;
    * answer: ``answer_key``, else ``answer``, else ``reward_model.ground_truth`` (verl's schema), else the
      content of the last ``\\boxed{}`` in ``solution``; an ``answer_alternatives`` list is merged in,
      giving ``Example.answer`` as a tuple when there are several distinct forms. Integer and float answers
      are converted to strings (``27.0`` -> ``"27"``);
    * a key may name a nested field with dots: ``reward_model.ground_truth`` is ``row["reward_model"]
      ["ground_truth"]`` (a column whose own name has a dot is found first);
    * id: the row's ``id`` (string or integer), else ``f"{stem}-{n}"`` (n = line or row number);
    * every other column is kept in ``Example.columns`` for user reward functions.

    A parquet file is checked against its schema first: a key naming no column, or no problem / answer
    column at all, is an error naming the file and the columns it has.

Bad rows
    Every problem is reported as ``DataError`` (a ``ValueError``) whose message starts with
    ``<file>:<line>:`` for JSON lines files and ``<file>:row <n>:`` for JSON / parquet / hub data
    (1-based), then names the field, e.g. ``data.jsonl:7: field 'answer' is missing``. With
    ``on_bad_row="skip"`` such rows are skipped instead and counted by reason in the returned
    :class:`LoadReport`. A missing file, an unreadable file and a source with no valid row are errors
    in both modes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popo.data.example import Example
from popo.data.fields import ANSWER_KEYS, PROBLEM_KEYS, RowError, answers_of, problem_of, row_id
from popo.errors import DataError

__all__ = ["DataError", "LoadReport", "load_examples", "examples_from_rows", "locate_examples"]

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_REPORTED_MESSAGES = 5
MAX_LINE_BYTES = 64 * 2**20  # the longest JSON lines row read (64 MiB); a longer line is a bad row


@dataclass
class LoadReport:
    """What happened while loading: rows seen, examples kept, rows skipped by reason, first messages.

    reasons: ``malformed_json``, ``not_utf8``, ``not_an_object``, ``missing_field``, ``empty_field``,
    ``bad_type``, ``bad_chat``, ``no_boxed_answer``, ``duplicate_id``, ``too_long`` (a JSON lines row over
    ``MAX_LINE_BYTES``).
    """

    source: str
    rows: int = 0
    loaded: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict, repr=False)
    """Where each loaded example came from: id -> ``file:line`` (or ``file:row n``)."""

    @property
    def skipped(self) -> int:
        """Total number of skipped rows."""
        return sum(self.skipped_by_reason.values())

    def __str__(self) -> str:
        text = f"{self.source}: {self.loaded} examples from {self.rows} rows"
        if self.skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_reason.items()))
            text += f", skipped {self.skipped} ({reasons})"
        return text


# ----------------------------------------------------------------------------------------------------
# Readers: each yields (location, row or RowError); location is "file:7" or "file:row 7"
# ----------------------------------------------------------------------------------------------------

Located = tuple[str, int, Any]  # (prefix, number, row dict or RowError)


def _read_jsonl(path: Path, label: str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Located]:
    """The rows of a JSON lines file, read a line at a time: a line over ``max_line_bytes`` is a row error
    (``too_long``) read past in pieces, never held whole, so no line can take the memory a huge one would."""
    _check_exists(path)
    try:
        with path.open("rb") as handle:
            for number, raw, size in _lines(handle, max_line_bytes):
                yield f"{label}:{number}", number, _parse_line(raw, size, max_line_bytes)
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror})") from None


def _lines(handle, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, its bytes without the newline or None when over ``max_bytes``, its size) of each non-blank
    line of a binary file; a line over the limit is read past 1 MiB at a time."""
    number = 0
    while raw := handle.readline(max_bytes + 1):
        number += 1
        line = raw[:-1] if raw.endswith(b"\n") else raw
        size = len(line)
        while size > max_bytes and not raw.endswith(b"\n") and (raw := handle.readline(1 << 20)):
            size += len(raw) - raw.endswith(b"\n")
        if size > max_bytes or line.strip():
            yield number, line if size <= max_bytes else None, size


def _parse_line(raw: bytes | None, size: int, max_bytes: int) -> Any:
    """The JSON value of one line, or the RowError that says why it has none."""
    if raw is None:
        return RowError("too_long", f"line is {size:,} bytes, over the limit of {max_bytes:,} bytes a row may hold")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return RowError("not_utf8", f"line is not valid UTF-8 (byte {err.start + 1}: {err.reason})")
    except json.JSONDecodeError as err:
        return RowError("malformed_json", f"malformed JSON ({err.msg} at column {err.colno})")


def _read_json(path: Path, label: str) -> Iterator[Located]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{label}:{line}: file is not valid UTF-8 ({err.reason})") from None
    if not text.strip():
        raise DataError(f"{label}: file is empty")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{label}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if isinstance(payload, dict):
        for key in ("data", "examples", "rows"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
        else:
            raise DataError(f"{label}: expected a list of objects (or one under 'data', 'examples' or 'rows')")
    if not isinstance(payload, list):
        raise DataError(f"{label}: expected a list of objects, got {type(payload).__name__}")
    for number, row in enumerate(payload, start=1):
        yield f"{label}:row {number}", number, row


def _read_parquet(path: Path, label: str, problem_key: str | None = None,
                  answer_key: str | None = None) -> Iterator[Located]:
    _check_exists(path)
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as err:
        raise DataError(f"{label}: cannot read parquet file ({err})") from None
    _check_columns(table.schema.names, label, problem_key, answer_key)
    rows = table.to_pylist()
    for number, row in enumerate(rows, start=1):
        yield f"{label}:row {number}", number, row


def _read_hub(source: str, config: str | None, split: str) -> Iterator[Located]:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{source}: loading hub datasets needs the 'datasets' package ({err})") from None
    check_hub_reachable(source)
    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as err:
        raise DataError(f"{source}: cannot load hub dataset (config={config!r}, split={split!r}): {err}") from None
    label = f"{source}[{split}]"
    for number, row in enumerate(dataset, start=1):
        yield f"{label}:row {number}", number, row


def hub_cached(hub_id: str) -> bool:
    """Whether a copy of hub dataset `hub_id` is in the local `datasets` or Hugging Face hub cache."""
    import os

    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots = [os.environ.get("HF_DATASETS_CACHE"), os.environ.get("HF_HUB_CACHE"), home / "datasets", home / "hub"]
    names = (hub_id.replace("/", "___"), "datasets--" + hub_id.replace("/", "--"))
    return any((Path(root) / name).exists() for root in roots if root for name in names)


def check_hub_reachable(hub_id: str, timeout_s: float = 3.0) -> None:
    """Fail at once when the hub cannot be reached and `hub_id` is not cached (`datasets` would otherwise
    retry for half a minute, then fail without saying what to do). Offline mode, a proxy or a cached copy:
    no probe (those fail fast by themselves or can work without the hub)."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k, "") not in ("", "0") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")) or hub_cached(hub_id):
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
    except OSError:
        raise DataError(f"{hub_id}: the Hugging Face hub ({endpoint.hostname}) cannot be reached and the dataset is "
                        "not in the local cache: use a local .jsonl/.json/.parquet copy, or set HF_HUB_OFFLINE=1 "
                        "where it is cached") from None


def _check_columns(names: list[str], label: str, problem_key: str | None, answer_key: str | None) -> None:
    """A file-level error when a key names no column, or no problem / answer column exists at all."""
    def present(key: str) -> bool:
        return key in names or key.split(".")[0] in names

    columns = f"(columns: {', '.join(names) or 'none'})"
    for option, key in (("data.problem_key", problem_key), ("data.answer_key", answer_key)):
        if key is not None and not present(key):
            raise DataError(f"{label}: {option}={key!r} names no column {columns}")
    if problem_key is None and not any(present(k) for k in PROBLEM_KEYS):
        raise DataError(f"{label}: no problem column: expected one of {', '.join(PROBLEM_KEYS)} or set "
                        f"data.problem_key {columns}")
    if answer_key is None and not any(present(k) for k in ANSWER_KEYS):
        raise DataError(f"{label}: no answer column: expected one of {', '.join(ANSWER_KEYS)} or set "
                        f"data.answer_key {columns}")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")


def _read_bytes(path: Path) -> bytes:
    _check_exists(path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror})") from None


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


def _check_load_options(on_bad_row: str, limit: int | None) -> None:
    """Reject an `on_bad_row` other than "error" / "skip" and a `limit` below 1."""
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def _transformed(answers: list[str], answer_transform: Callable[[str], str], answer_key: str | None) -> list[str]:
    """The answers through `answer_transform`; a ValueError from it or an answer left empty rejects the row."""
    try:
        answers = [answer_transform(a) for a in answers]
    except ValueError as err:
        raise RowError("bad_type", f"field '{answer_key or 'answer'}': {err}") from None
    if not all(a.strip() for a in answers):
        raise RowError("empty_field", f"field '{answer_key or 'answer'}' is empty after conversion")
    return answers


def _row_example(row: Any, default_id: str, seen_ids: dict[str, str], *, problem_key: str | None,
                 answer_key: str | None, answer_transform: Callable[[str], str] | None) -> Example:
    """The Example of one row; a RowError naming the field at fault when the row is bad (a reader's error, not
    an object, a missing or bad problem or answer, an id already in `seen_ids`)."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is not a JSON object (got {type(row).__name__})")
    problem, messages, used_key = problem_of(row, problem_key)
    answers = answers_of(row, answer_key)
    if answer_transform is not None:
        answers = _transformed(answers, answer_transform, answer_key)
    example_id = row_id(row, default_id)
    if example_id in seen_ids:
        raise RowError("duplicate_id", f"field 'id': duplicate id {example_id!r} (first at {seen_ids[example_id]})")
    answer: str | tuple[str, ...] = answers[0] if len(answers) == 1 else tuple(answers)
    columns = {k: v for k, v in row.items() if k != used_key}  # for user reward functions
    return Example(problem=problem, answer=answer, id=example_id, messages=messages, columns=columns)


def _skip_or_raise(report: LoadReport, message: str, reason: str, on_bad_row: str) -> None:
    """A bad row's `message` as a DataError, or with `on_bad_row="skip"` counted under `reason` (and kept
    among the report's first messages)."""
    if on_bad_row == "error":
        raise DataError(message) from None
    report.skipped_by_reason[reason] = report.skipped_by_reason.get(reason, 0) + 1
    if len(report.messages) < MAX_REPORTED_MESSAGES:
        report.messages.append(message)


def _require_examples(report: LoadReport) -> None:
    """A DataError when no example was loaded: the source is empty, or every row was bad."""
    if report.loaded == 0:
        if report.rows == 0:
            raise DataError(f"{report.source}: no rows (the source is empty)")
        raise DataError(f"{report.source}: no valid rows ({report.skipped} skipped: {report.skipped_by_reason})")


def examples_from_rows(
    rows: Iterable[Located],
    *,
    label: str,
    stem: str,
    problem_key: str | None = None,
    answer_key: str | None = None,
    answer_transform: Callable[[str], str] | None = None,
    on_bad_row: str = "error",
    limit: int | None = None,
) -> tuple[list[Example], LoadReport]:
    """Validate located rows into Examples (the shared core of :func:`load_examples`).

    ``rows`` yields ``(prefix, number, row)`` where prefix is the location used in messages.
    ``answer_transform`` post-processes each answer string (e.g. GSM8K's text after ``####``); it may
    raise ``ValueError`` to reject a row.
    """
    _check_load_options(on_bad_row, limit)
    report = LoadReport(source=label)
    examples: list[Example] = []
    for prefix, number, row in rows:
        report.rows += 1
        try:
            example = _row_example(row, f"{stem}-{number}", report.locations, problem_key=problem_key,
                                   answer_key=answer_key, answer_transform=answer_transform)
        except RowError as err:
            _skip_or_raise(report, f"{prefix}: {err.message}", err.reason, on_bad_row)
            continue
        report.locations[example.id] = prefix
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    report.loaded = len(examples)
    _require_examples(report)
    return examples, report


def load_examples(
    source: str | Path,
    *,
    split: str = "train",
    config: str | None = None,
    problem_key: str | None = None,
    answer_key: str | None = None,
    on_bad_row: str = "error",
    limit: int | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[list[Example], LoadReport]:
    """Load Examples from a local ``.jsonl`` / ``.json`` / ``.parquet`` file or a hub dataset id.

    ``split`` and ``config`` only apply to hub datasets. ``limit`` stops after that many examples.
    ``max_line_bytes`` caps one line of a ``.jsonl`` file (a longer line is a bad row, never read whole).
    Returns the examples and a :class:`LoadReport`; raises :class:`DataError` on a bad row (unless
    ``on_bad_row="skip"``), a missing or unreadable file, or a source without any valid row.
    """
    path = Path(source)
    text = str(source)
    suffix = path.suffix.lower()
    common = dict(problem_key=problem_key, answer_key=answer_key, on_bad_row=on_bad_row, limit=limit)
    if suffix in LOCAL_SUFFIXES or path.exists():
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}.get(suffix)
        if reader is None:
            raise DataError(f"{text}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")
        rows = (_read_parquet(path, text, problem_key, answer_key) if suffix == ".parquet"  # schema checked first
                else _read_jsonl(path, text, max_line_bytes) if suffix == ".jsonl" else reader(path, text))
        return examples_from_rows(rows, label=text, stem=path.stem, **common)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise DataError(f"{text}: file not found (and not a hub dataset id)")
    return examples_from_rows(
        _read_hub(text, config, split), label=f"{text}[{split}]", stem=text.rsplit("/", 1)[-1], **common
    )


def locate_examples(source: str | Path, ids: Iterable[str], *, split: str = "train", config: str | None = None,
                    problem_key: str | None = None, answer_key: str | None = None) -> dict[str, str]:
    """``file:line`` (or ``file:row n``) of the examples with these ids, found by reading the source again.

    For messages about examples after loading (e.g. a prompt too long once rendered); ids not found
    are left out. Reading again keeps :class:`~popo.data.example.Example` free of bookkeeping.
    """
    wanted = set(ids)
    try:
        _, report = load_examples(source, split=split, config=config, problem_key=problem_key,
                                  answer_key=answer_key, on_bad_row="skip")
    except DataError:
        return {}
    return {i: where for i, where in report.locations.items() if i in wanted}
