"""Issue 37: a real `popo compare` with two workers, stopped by a real signal, the way a user or a scheduler
stops it: SIGINT to the study's whole process group, twice (Ctrl-C pressed twice, `timeout -s INT`), sent to a
study started by a shell that ignores SIGINT in its background jobs (the issue's case, where a queued run used
to start and the command waited for it to train to the end), and SIGTERM to the study's process alone (a
scheduler, `kill`). Each time: exit status 130 without a traceback, the runs in progress saved a checkpoint, no queued run started
(no config.yaml of a seed-1 run), the command exited (a 120 s guard against a hang, not a measurement), and no
process of the study survives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

METHODS = ("popo", "grpo")


def study_processes(pgid: int) -> list:
    """The live processes of the study's process group (the command, its workers and their helpers)."""
    alive = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


def wait_for(condition, timeout: float, proc: subprocess.Popen, err: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the study ended (status {proc.returncode}) before {what}:\n"
                                 + err.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step-*"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c twice", "sigterm to the study"])
def test_a_signal_stops_a_study_with_workers_at_once_and_starts_no_queued_run(tiny_testbed, tmp_path, how):
    out = tmp_path / "study"
    config = tmp_path / "tiny.yaml"  # a config file: the study's own defaults (the demo's task) do not apply
    config.write_text("train: {progress: false, tensorboard: false}\n")
    command = [sys.executable, "-m", "popo", "compare", str(config), *tiny_testbed, "train.steps=100000",
               "train.save_every=1", "train.keep_last=1", "--methods", ",".join(METHODS), "--seeds", "2",
               "--workers", "2", "--threads", "1", "--out", str(out), "--no-report"]
    if how == "ctrl-c twice":  # started as a non-interactive shell starts a background job: SIGINT ignored
        command = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *command]
    log, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with log.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    pgid = proc.pid  # start_new_session: the study leads its own group, as a terminal's foreground job does
    try:
        runs = [out / m / "seed-0" for m in METHODS]
        wait_for(lambda: all(checkpoints(r) for r in runs), 300, proc, err, "both seed-0 runs saved a checkpoint")
        assert len(study_processes(pgid)) >= 3  # the command and its two workers (and their helpers)
        if how == "sigterm to the study":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(pgid, signal.SIGINT)
            time.sleep(1.0)  # while the runs in progress finish their step
            os.killpg(pgid, signal.SIGINT)
        proc.wait(timeout=120)  # a guard against a hang, not a measurement
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
    text = err.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert len([line for line in text.splitlines() if line.startswith("interrupted: popo compare")]) == 1, text
    for run in runs:  # the runs in progress stopped with a checkpoint, unfinished
        assert checkpoints(run) and not (run / "done.json").exists()
    for method in METHODS:  # the queued runs never started
        assert not (out / method / "seed-1" / "config.yaml").exists(), log.read_text()[-2000:]
    assert not (out / ".stopping").exists()
    deadline = time.monotonic() + 10
    while study_processes(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert study_processes(pgid) == [], [p.cmdline() for p in study_processes(pgid)]


def test_sigterm_between_runs_trained_in_the_commands_process_stops_the_study(tiny_testbed, tmp_path, monkeypatch,
                                                                              capsys):
    """Without workers the runs train in the command's own process: SIGTERM outside a trainer's run (here while
    the first run is being built) ends the study as Ctrl-C does, instead of killing the process."""
    import popo.build

    build = popo.build.build_trainer

    def terminated_while_building(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # a scheduler's stop
        return build(*args, **kwargs)

    monkeypatch.setattr(popo.build, "build_trainer", terminated_while_building)
    from popo.cli import main

    out = tmp_path / "study"
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {progress: false}\n")
    assert main(["compare", str(config), *tiny_testbed, "train.steps=2", "--methods", "popo", "--seeds", "2",
                 "--out", str(out), "--no-report"]) == 130
    assert "interrupted: popo compare" in capsys.readouterr().err
    assert not (out / "popo" / "seed-1").exists()


def sleeper(stop_file: str, i: int) -> dict:
    """A pool job: job 0 fails after a second, the others run until they are stopped; each marks its start."""
    from popo.study.pool import job_running

    with job_running():
        if Path(stop_file).exists():
            raise KeyboardInterrupt
        Path(stop_file).with_name(f"started-{i}").touch()
        if i == 0:
            time.sleep(1.0)
            raise ValueError("run 0 failed")
        time.sleep(300)  # until the study stops it
        Path(stop_file).with_name(f"finished-{i}").touch()
        return {"i": i}


def test_a_failed_run_stops_the_others_and_its_error_is_raised(tmp_path):
    from popo.study.pool import run_in_pool

    stop, lines = tmp_path / ".stopping", []
    with pytest.raises(ValueError, match="run 0 failed"):
        run_in_pool(sleeper, [(str(stop), i) for i in range(3)], workers=2, threads=1, stop_file=stop,
                    finished=lambda record: pytest.fail(f"no job finishes: {record}"), log=lines.append)
    assert not (tmp_path / "finished-1").exists()  # the running job was stopped, not waited for
    assert (tmp_path / "started-1").exists() and not (tmp_path / "started-2").exists()  # the queued one never ran
    assert any(line.startswith("stopping (a run failed): 1 runs in progress") for line in lines), lines
    assert not stop.exists()
