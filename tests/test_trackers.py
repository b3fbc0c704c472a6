"""Experiment trackers (`train.report_to`): TensorBoard, wandb in offline mode and MLflow with a store in the
run folder, each written through its own library; a resumed run continues the same tracker run.

wandb and MLflow are optional extras (`popo[wandb]`, `popo[mlflow]`), kept out of the dev install to keep
CI light: their tests are skipped, visibly, where the library is not installed."""

from __future__ import annotations

import json

import pytest

from popo.config import load_config
from popo.errors import ConfigError
from popo.tracking import MetricsWriter, read_metrics

RECORDS = [{"step": 1, "reward_mean": 0.25, "eval/pass@4": 0.5, "skipped": False},
           {"step": 2, "reward_mean": 0.5}, {"step": 3, "reward_mean": 0.75}]


def write(run_dir, records, *, resume_step=None, report_to=("tensorboard",)):
    writer = MetricsWriter(run_dir, resume_step=resume_step, report_to=report_to, config={"algo": {"name": "popo"}})
    for record in records:
        writer.write(record)
    writer.close()


def test_tensorboard_events_continue_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write(tmp_path, RECORDS)  # steps 1-3 were logged, the checkpoint was at step 1
    write(tmp_path, [{"step": 2, "reward_mean": 0.125}], resume_step=1)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward_mean")] == [(1, 0.25), (2, 0.125)]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "trackers.json").exists()  # nothing to reopen


def test_mlflow_run_is_continued_on_resume(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'popo[mlflow]'")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    write(tmp_path, RECORDS[:2], report_to=("mlflow",))
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    write(tmp_path, RECORDS[2:], resume_step=2, report_to=("mlflow",))
    assert json.loads((tmp_path / "trackers.json").read_text())["mlflow"] == run_id
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    history = client.get_metric_history(run_id, "reward_mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [m.value for m in client.get_metric_history(run_id, "eval/pass_at_4")] == [0.5]  # @ is not allowed
    run = client.get_run(run_id)
    assert run.data.params["algo.name"] == "popo" and run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("popo")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # one run, not one per resume


def test_wandb_offline_run_is_continued_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'popo[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    write(tmp_path, RECORDS[:2], report_to=("wandb",))
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    write(tmp_path, RECORDS[2:], resume_step=2, report_to=("wandb",))
    assert json.loads((tmp_path / "trackers.json").read_text())["wandb"] == run_id
    # offline mode writes one folder per session, both under the same run id, inside the run folder
    sessions = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and all(name.endswith(f"-{run_id}") for name in sessions)
    assert all(any(p.suffix == ".wandb" for p in (tmp_path / "wandb" / s).iterdir()) for s in sessions)


def test_report_to_is_checked_when_the_config_is_read(monkeypatch):
    assert load_config(None, ["train.report_to=tensorboard,none"]).train.report_to == ("tensorboard", "none")
    with pytest.raises(ConfigError, match="did you mean 'mlflow'"):
        load_config(None, ["train.report_to=mlfow"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to=wandb needs the wandb package: pip install 'popo\[wandb\]'"):
        load_config(None, ["train.report_to=wandb"])


def test_a_resumed_training_run_logs_to_the_same_mlflow_run(tmp_path, tiny_testbed, monkeypatch, one_thread):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'popo[mlflow]'")
    from popo.build import build_trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    base = [*tiny_testbed, f"train.out_dir={run}", "train.report_to=mlflow", "train.save_every=1"]
    build_trainer(load_config(None, [*base, "train.steps=2"]), log=lambda m: None).run()
    build_trainer(load_config(None, [*base, "train.steps=3"]), resume=True, log=lambda m: None).run()
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    history = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri()).get_metric_history(run_id, "reward_mean")
    assert sorted(m.step for m in history) == [1, 2, 3]
