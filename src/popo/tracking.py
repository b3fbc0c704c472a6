"""Metrics stream: one JSON object a line in `metrics.jsonl`, mirrored to the experiment trackers named by
`train.report_to`: TensorBoard (event files beside it), Weights & Biases and MLflow (their own libraries,
optional extras: `pip install 'popo[wandb]'`, `'popo[mlflow]'`).

Each record is written and flushed as one line. A process killed mid-write can leave a partial last line;
on resume that line is dropped with the records after the checkpoint's step, and the file is rewritten
atomically (temporary file + rename), so a second crash during the rewrite loses nothing.

A resumed run continues the same tracker runs: the wandb run id and the MLflow run id are kept in
`trackers.json` in the run folder and reopened on resume. wandb follows its own settings (`WANDB_MODE=offline`
writes its files under the run folder, `WANDB_PROJECT`, default `popo`); MLflow logs to `MLFLOW_TRACKING_URI`,
or without it to a file store in the run folder (`mlruns/`, experiment `MLFLOW_EXPERIMENT_NAME` or `popo`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "mlflow")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsWriter:
    """Appends metric records and mirrors them to the trackers; on resume, records after the checkpoint's
    step are dropped first so the stream continues exactly where the checkpoint left it.

    `report_to` names the trackers (`tensorboard`, `wandb`, `mlflow`; `tensorboard=False` drops
    TensorBoard); `config` (a plain dict) is recorded with a new wandb or MLflow run.
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None, tensorboard: bool = True,
                 report_to: Sequence[str] = ("tensorboard",), config: dict | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(errors="replace").splitlines()
                    if (step := _record_step(line)) is not None and step <= resume_step]
            _replace_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            _replace_text(self.path, "")
        self._file = self.path.open("a")
        names = [n for n in report_to if n in TRACKERS and (n != "tensorboard" or tensorboard)]
        self.trackers = open_trackers(names, self.path.parent, resume_step=resume_step, config=config or {})

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        values = _scalars(record)
        for tracker in self.trackers:
            tracker.log(values, int(record["step"]))

    def close(self) -> None:
        self._file.close()
        for tracker in self.trackers:
            tracker.close()


def open_trackers(names: Sequence[str], run_dir: Path, *, resume_step: int | None, config: dict) -> list:
    """The trackers `names`, each continuing its run from `trackers.json` when `resume_step` is set."""
    ids_path = run_dir / "trackers.json"
    ids = json.loads(ids_path.read_text()) if resume_step is not None and ids_path.is_file() else {}
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}
    trackers = [kinds[name](run_dir, run_id=ids.get(name), resume_step=resume_step, config=config) for name in names]
    ids.update({name: t.run_id for name, t in zip(names, trackers) if t.run_id is not None})
    if ids:
        _replace_text(ids_path, json.dumps(ids, indent=1) + "\n")
    return trackers


class TensorBoardTracker:
    """Event files in `<run>/tensorboard`; on resume, events after the checkpoint's step are purged."""

    run_id = None

    def __init__(self, run_dir: Path, *, run_id, resume_step: int | None, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """A wandb run (`resume="allow"` with the saved id on resume); files under the run folder."""

    def __init__(self, run_dir: Path, *, run_id: str | None, resume_step: int | None, config: dict):
        import wandb

        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "popo"), name=run_dir.name, dir=str(run_dir),
                               config=config, id=run_id, resume="allow" if run_id else None, reinit="create_new")
        self.run_id = self._run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")


class MlflowTracker:
    """An MLflow run (reopened by id on resume), logged through `MlflowClient`; metric names with characters
    MLflow refuses are rewritten (`eval/pass@4` -> `eval/pass_at_4`)."""

    def __init__(self, run_dir: Path, *, run_id: str | None, resume_step: int | None, config: dict):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a store in the run folder; MLflow asks to opt in to its file store explicitly
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self._client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "popo")
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
            run_id = self._client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            params = [Param(k, str(v)[:500]) for k, v in _flat(config).items()]
            self._client.log_batch(run_id, params=params)
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_KEY.sub("_", k.replace("@", "_at_")), v, now, step) for k, v in values.items()
                   if math.isfinite(v)]
        self._client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
