"""Crash and resume: the trainer runs as a subprocess, is killed (SIGKILL between steps, at an arbitrary
moment, in the middle of a checkpoint write) or stopped (SIGTERM), then `popo train --resume` finishes
the run. On CPU with a fixed seed the resumed run must be bit-identical to an uninterrupted one: the
same metrics lines (wall-clock `time/*` keys aside) and the same final weights.

Faults are injected from outside the library: a small runner script monkeypatches one function of the
library in the child process (no fault hooks in library code).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch
from safetensors.torch import save_file

from popo.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint, verify_checkpoint
from popo.models import Snapshot

STEPS = 6

# argv: FAULT STEP -- popo CLI arguments
RUNNER = r"""
import os, signal, sys, time

fault, at = sys.argv[1], int(sys.argv[2])
argv = sys.argv[4:]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if fault == "kill-after-metrics":  # SIGKILL right after the metrics line of step `at` is written
    import popo.tracking as tracking

    write = tracking.MetricsWriter.write

    def patched_write(self, record):
        write(self, record)
        if record.get("step") == at and "reward_mean" in record:
            die()

    tracking.MetricsWriter.write = patched_write
elif fault == "kill-in-checkpoint":  # SIGKILL half-way through a file of checkpoint `at`
    import popo.companions as companions  # the target's and predictor's files

    save_file = companions.save_file

    def patched_save_file(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        if f"step-{at:06d}" in str(filename):
            data = open(filename, "rb").read()
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
            die()

    companions.save_file = patched_save_file
elif fault == "slow":  # each step takes a little longer, so an outside signal lands mid-run
    import popo.trainer as trainer

    train_step = trainer.Trainer.train_step

    def patched_train_step(self, step):
        record = train_step(self, step)
        time.sleep(0.2)
        return record

    trainer.Trainer.train_step = patched_train_step

from popo.cli import main

sys.exit(main(argv))
"""


def launch(cli_args: list[str], fault: str = "none", at: int = 0) -> subprocess.Popen:
    # one thread: as exact as two, and much faster when other jobs share the CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", RUNNER, fault, str(at), "--", *cli_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def train_args(overrides: list[str], out_dir: Path, *extra: str) -> list[str]:
    return ["train", *overrides, f"train.steps={STEPS}", "train.eval_every=3", "train.eval_samples=2",
            "train.diag_every=2", "train.save_every=2", "train.keep_last=3", "algo.tau=0.5",
            f"train.out_dir={out_dir}", *extra]


def resume(out_dir: Path) -> str:
    rc, out = finish(launch(["train", "--resume", str(out_dir)]))
    assert rc == 0, out
    return out


def comparable_metrics(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def weights_hashes(run_dir: Path) -> dict[str, str]:
    final = latest_checkpoint(run_dir)
    assert final is not None and final.name == f"step-{STEPS:06d}"
    files = ["policy/model.safetensors", "popo/target.safetensors", "popo/predictor.safetensors"]
    return {name: hashlib.sha256((final / name).read_bytes()).hexdigest() for name in files}


def read_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def wait_for_lines(run_dir: Path, lines: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the run has logged `lines` metrics lines (the step-0 evaluation counts as one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(read_lines(run_dir)) >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"{run_dir} did not reach {lines} metrics lines (exit code {proc.poll()})")


@pytest.fixture(scope="module")
def reference(tiny_testbed, tmp_path_factory):
    """The uninterrupted run: its directory, metrics and final weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    rc, log = finish(launch(train_args(tiny_testbed, out)))
    assert rc == 0, log
    metrics = comparable_metrics(out)
    assert [r["step"] for r in metrics] == list(range(STEPS + 1))  # step 0 is the initial evaluation
    assert all(r["skipped"] == 0.0 for r in metrics[1:]), "every step should update"
    return out, metrics, weights_hashes(out)


def assert_same_as_reference(run_dir: Path, reference) -> None:
    _, metrics, hashes = reference
    got = comparable_metrics(run_dir)
    differences = [(r.get("step"), {k: (r.get(k), e.get(k)) for k in r.keys() | e.keys() if r.get(k) != e.get(k)})
                   for r, e in zip(got, metrics) if r != e]
    assert not differences, f"metrics differ from the uninterrupted run (step, {{key: (got, expected)}}): {differences}"
    assert len(got) == len(metrics)
    assert weights_hashes(run_dir) == hashes


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_between_steps(tiny_testbed, tmp_path, reference):
    out = tmp_path / "run"
    # 1. killed half-way through writing checkpoint 4: the torn write stays in its .tmp folder
    rc, log = finish(launch(train_args(tiny_testbed, out), "kill-in-checkpoint", 4))
    assert rc == -signal.SIGKILL, log
    assert (out / "checkpoints" / "step-000004.tmp").is_dir()
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    assert len(read_lines(out)) == 5  # steps 0..4 were logged before the kill
    # 2. resumed from step 2 (metrics after it dropped), then killed right after logging step 5
    rc, log = finish(launch(["train", "--resume", str(out)], "kill-after-metrics", 5))
    assert rc == -signal.SIGKILL, log
    assert "at step 2" in log
    assert [p.name for p in list_checkpoints(out)] == ["step-000002", "step-000004"]
    assert not (out / "checkpoints" / "step-000004.tmp").exists()
    assert [json.loads(line)["step"] for line in read_lines(out)] == [0, 1, 2, 3, 4, 5]
    # 3. resumed from step 4 to the end: the same run as the uninterrupted one
    assert "at step 4" in resume(out)
    assert_same_as_reference(out, reference)


@pytest.mark.slow
def test_sigterm_checkpoints_then_sigkill_at_an_arbitrary_moment(tiny_testbed, tmp_path, reference):
    out = tmp_path / "run"
    # 1. SIGTERM from outside: the step in progress finishes, a final checkpoint is written, exit 0
    proc = launch(train_args(tiny_testbed, out), "slow")
    wait_for_lines(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    rc, log = finish(proc)
    assert rc == 0, log
    stopped_at = len(read_lines(out)) - 1
    assert 1 <= stopped_at <= STEPS - 2
    assert f"stop requested: saving a final checkpoint at step {stopped_at}" in log
    latest = latest_checkpoint(out)
    assert latest is not None and latest.name == f"step-{stopped_at:06d}"
    # 2. resumed, then SIGKILL from outside wherever the run happens to be
    proc = launch(["train", "--resume", str(out)], "slow")
    wait_for_lines(out, stopped_at + 2, proc)
    time.sleep(0.05)
    proc.kill()
    rc, log = finish(proc)
    assert rc == -signal.SIGKILL, log
    # 3. resumed to the end
    resume(out)
    assert_same_as_reference(out, reference)


def test_corrupted_checkpoint_is_skipped_with_a_message(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    damaged = out / "checkpoints" / f"step-{STEPS:06d}" / "policy" / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    damaged.write_bytes(bytes(data))
    assert verify_checkpoint(damaged.parents[1]) == "policy/model.safetensors does not match its checksum"
    log = resume(out)
    assert f"skipping checkpoint {damaged.parents[1]}: policy/model.safetensors does not match its checksum" in log
    assert "at step 4" in log
    assert_same_as_reference(out, reference)  # step 6 rewritten, intact


def test_partial_checkpoints_are_not_listed_or_are_rejected(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-000003.tmp").mkdir(parents=True)  # a write that never finished
    (root / "step-000002").mkdir()  # a folder without manifest
    (root / "step-000002" / "state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    assert verify_checkpoint(root / "step-000002") == "no MANIFEST.json (incomplete write)"
    messages: list[str] = []
    assert latest_checkpoint(tmp_path, messages.append) is None
    assert messages == [f"skipping checkpoint {root / 'step-000002'}: no MANIFEST.json (incomplete write)"]


class _TinyModel(torch.nn.Linear):
    """Stands in for a transformers model: `save_pretrained` writes one safetensors file."""

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")


class _TinyTokenizer:
    def save_pretrained(self, folder: Path) -> None:
        (folder / "tokenizer.json").write_text("{}")


def _save(run_dir: Path, step: int, keep_last: int = 2) -> Path:
    model = _TinyModel(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    snapshot = Snapshot(model, None, None, optimizer.state_dict())
    return save_checkpoint(run_dir, step, snapshot=snapshot, tokenizer=_TinyTokenizer(), scheduler=scheduler,
                           state={"bad_steps": 0}, keep_last=keep_last)


def test_checkpoint_save_prunes_and_replaces_safely(tmp_path):
    for step in (2, 4, 6):
        assert verify_checkpoint(_save(tmp_path, step)) is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    (tmp_path / "checkpoints" / "step-000008.tmp").mkdir()  # a torn write of a crashed run
    _save(tmp_path, 6)  # the same step again (a stop request on a save step)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    # a damaged newer checkpoint that a resume skipped is removed by the next save, so keep_last=1
    # cannot prune the intact one and keep the damaged one
    (tmp_path / "checkpoints" / "step-000006" / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path, lambda m: None).name == "step-000004"
    _save(tmp_path, 5, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000005"]


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "MANIFEST.json").unlink(), "no MANIFEST.json (incomplete write)"),
    (lambda c: (c / "MANIFEST.json").write_text("{not json"), "MANIFEST.json is not a valid manifest"),
    (lambda c: (c / "MANIFEST.json").write_text("[1, 2]"), "MANIFEST.json is not a valid manifest"),
    (lambda c: (c / "MANIFEST.json").write_text("{}"), "MANIFEST.json does not list optimizer.pt"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:-7]),
     "optimizer.pt does not match its checksum"),
])
def test_damaged_checkpoints_are_named_and_skipped(tmp_path, damage, reason):
    _save(tmp_path, 1)
    damage(_save(tmp_path, 2))
    messages: list[str] = []
    assert latest_checkpoint(tmp_path, messages.append).name == "step-000001"
    assert messages == [f"skipping checkpoint {tmp_path / 'checkpoints' / 'step-000002'}: {reason}"]
