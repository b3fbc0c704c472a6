"""Atomic checkpoints holding everything needed to resume a run exactly.

Layout of `RUN_DIR/checkpoints/step-000050/`:
    policy/          the policy (`save_pretrained`, safetensors) and its tokenizer
    popo/            the EMA target and the predictor, when the algorithm has them (`popo.companions`, the
                     format the TRL and verl integrations write too)
    optimizer.pt     optimizer and scheduler state, RNG states
    state.json       step, data position, counters, the resolved config
    MANIFEST.json    size and SHA-256 of every file above, written last

A checkpoint is written into `step-N.tmp`, flushed to disk (fsync) and renamed into place, so a crash
leaves either the old set of checkpoints or the new one; leftover `.tmp` folders are never read and are
removed by the next save. On load, a folder whose manifest is missing, unreadable, incomplete or does
not match the files is skipped with a message, and the next older checkpoint is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from popo.errors import CheckpointError


CHECKPOINT_NAME = re.compile(r"step-\d+")
REQUIRED_FILES = ("optimizer.pt", "state.json")  # and at least one policy/*.safetensors


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a rename that follows cannot outlive its content."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, *, snapshot, tokenizer, scheduler, state: dict[str, Any],
                    keep_last: int = 2) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep_last`. `snapshot` is the
    models' part (`popo.models.Snapshot`: it writes policy/ and popo/, and holds the
    full optimizer state).

    Checkpoints of later steps can only exist when a resume skipped them as damaged: they are removed, so
    pruning never leaves a damaged checkpoint in place of the intact one just written."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    root.mkdir(parents=True, exist_ok=True)
    clear_partial_writes(run_dir)  # torn writes of earlier runs of this folder
    tmp.mkdir()
    try:
        _write(tmp, step, snapshot=snapshot, tokenizer=tokenizer, scheduler=scheduler, state=state)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)  # the torn write goes; the intact checkpoints stay
        if not isinstance(err, OSError) and not _no_space(err):
            raise
        last = latest_checkpoint(run_dir, log=lambda message: None)
        cause = "no space left on device" if _no_space(err) else f"{type(err).__name__}: {err}"
        intact = f"step {int(last.name.split('-')[1])}" if last else "none"
        raise CheckpointError(f"{cause} while writing checkpoint step {step} in {root}; the last intact checkpoint "
                              f"is {intact}; free space and continue with `popo train --resume {run_dir}`") from None
    if final.exists():  # the same step saved twice (e.g. a stop request on a save step): swap, then drop
        old = root / f"step-{step:06d}.replaced.tmp"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync(root)
    kept = list_checkpoints(run_dir)
    newer = [p for p in kept if int(p.name.split("-")[1]) > step]  # damaged ones a resume skipped
    older = [p for p in kept if p not in newer]
    for stale in newer + older[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, *, snapshot, tokenizer, scheduler, state: dict[str, Any]) -> None:
    """Every file of a checkpoint into `tmp`, then its manifest, all flushed to disk."""
    snapshot.write(tmp, tokenizer)
    torch.save({"optimizer": snapshot.optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    for path in [*files, tmp / "MANIFEST.json", *{p.parent for p in files}]:
        _fsync(path)


def _no_space(err: BaseException) -> bool:
    """Whether `err` says the disk is full (an OSError, or a library's wrapped I/O error)."""
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "StorageFull" in text


def clear_partial_writes(run_dir: str | Path) -> None:
    """Remove the `.tmp` folders of checkpoint writes that never finished (a crash or a full disk)."""
    for stale in (Path(run_dir) / "checkpoints").glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)),
                  key=lambda p: int(p.name.split("-")[1]))


def verify_checkpoint(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    manifest_path = path / "MANIFEST.json"
    if not manifest_path.is_file():
        return "no MANIFEST.json (incomplete write)"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = {str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in manifest.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return "MANIFEST.json is not a valid manifest"
    for name in REQUIRED_FILES:
        if name not in entries:
            return f"MANIFEST.json does not list {name}"
    if not any(n.startswith("policy/") and n.endswith(".safetensors") for n in entries):
        return "MANIFEST.json lists no policy weights"
    for name, (size, digest) in entries.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size or _sha256(file) != digest:
            return f"{name} does not match its checksum"
    return None


def latest_checkpoint(run_dir: str | Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest intact checkpoint; damaged ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log(f"skipping checkpoint {path}: {problem}")
    return None


def load_training_state(path: Path, *, optimizer, scheduler,
                        adapt_optimizer: Callable[[dict], dict] | None = None) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG state; returns state.json's content. `adapt_optimizer` maps
    the saved (full) optimizer state to this run's (e.g. cut to FSDP shards)."""
    blob = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"] if adapt_optimizer is None else adapt_optimizer(blob["optimizer"]))
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "state.json").read_text())
