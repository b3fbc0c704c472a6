"""Atomic checkpoints holding everything needed to resume a run exactly.

Layout of `RUN_DIR/checkpoints/step-000050/`:
    policy/          the policy (`save_pretrained`, safetensors) and its tokenizer
    target/          the EMA target (`save_pretrained`), when the algorithm has one
    predictor.safetensors
    optimizer.pt     optimizer and scheduler state, RNG states
    state.json       step, data position, counters, the resolved config
    MANIFEST.json    size and SHA-256 of every file above, written last

A checkpoint is written into `step-N.tmp` and renamed into place, so a crash leaves either the old set of
checkpoints or the new one. On load, a folder whose manifest is missing or does not match is skipped with
a message, and the next older checkpoint is used.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


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


def save_checkpoint(run_dir: str | Path, step: int, *, policy, tokenizer, optimizer, scheduler,
                    state: dict[str, Any], target=None, predictor=None, keep_last: int = 2) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep_last`."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "policy")
    tokenizer.save_pretrained(tmp / "policy")
    if target is not None:
        target.save_pretrained(tmp / "target")
    if predictor is not None:
        save_file({k: v.contiguous() for k, v in predictor.state_dict().items()}, tmp / "predictor.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp")
                   and p.name.startswith("step-")), key=lambda p: p.name)


def verify_checkpoint(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    manifest_path = path / "MANIFEST.json"
    if not manifest_path.is_file():
        return "no MANIFEST.json (incomplete write)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "MANIFEST.json is not valid JSON"
    for name, entry in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
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


def load_training_state(path: Path, *, optimizer, scheduler, predictor=None) -> dict[str, Any]:
    """Restore optimizer, scheduler, predictor and RNG state; returns state.json's content."""
    blob = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    if predictor is not None:
        predictor.load_state_dict(load_file(path / "predictor.safetensors"))
    return json.loads((path / "state.json").read_text())
