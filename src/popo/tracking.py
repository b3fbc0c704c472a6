"""Metrics stream: one JSON object a line in `metrics.jsonl`, mirrored to TensorBoard.

Each record is written and flushed as one line. A process killed mid-write can leave a partial last line;
on resume that line is dropped with the records after the checkpoint's step, and the file is rewritten
atomically (temporary file + rename), so a second crash during the rewrite loses nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends metric records; on resume, records after the checkpoint's step are dropped first so the
    stream continues exactly where the checkpoint left it."""

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(errors="replace").splitlines()
                    if (step := _record_step(line)) is not None and step <= resume_step]
            _replace_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            _replace_text(self.path, "")
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _record_step(line: str) -> int | None:
    """The step of one metrics line; None for a blank or torn line (a crash in the middle of a write)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return int(record.get("step", 0)) if isinstance(record, dict) else None


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file; a torn last line (the writer was killed mid-line) is ignored."""
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    if lines and _record_step(lines[-1]) is None:
        lines.pop()
    return [json.loads(line) for line in lines]
