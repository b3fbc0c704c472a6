"""POPO's companions in a checkpoint, one format that popo's trainer, the TRL bridge and verl's engine all write
and read: the EMA target, the predictor, the predictor's optimizer when it has its own, and counters.

    <checkpoint>/popo/
        target.safetensors         the target's tensors by name (with LoRA, its adapter tensors; tied ones once)
        predictor.safetensors      the predictor's
        predictor_optimizer.pt     only when the predictor has an optimizer of its own (verl's engine); popo's
                                   trainer and TRL step it as a parameter group of the policy's optimizer
        state.json                 counters (verl's engine: its trainer steps)

A writer whose ranks each hold a shard of the target (verl's engine, sharded like the policy) writes the same
files per rank, in ``popo/world_size_{W}_rank_{r}/`` (`folder`), and reads them back with the same world size.
Where the tensors come from and go to (gathered FSDP tensors, local shards, LoRA adapter tensors) is each
caller's business (`popo.models.Models.companions` / `load_companions`, the verl engine); this module is the
files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from popo.errors import SetupError

FOLDER = "popo"


@dataclass
class Companions:
    """What a checkpoint holds of POPO's companions (None: the run has no such part)."""

    target: dict[str, torch.Tensor] | None = None
    predictor: dict[str, torch.Tensor] | None = None
    predictor_optimizer: dict | None = None
    state: dict = field(default_factory=dict)


def folder(checkpoint: str | Path, *, rank: int | None = None, world: int | None = None) -> Path:
    """Where a checkpoint's companions are: ``popo/``, or this rank's ``popo/world_size_W_rank_r/`` for a writer
    whose ranks each hold a shard."""
    base = Path(checkpoint) / FOLDER
    return base if rank is None else base / f"world_size_{world}_rank_{rank}"


def _unique(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with each memory block once (tied weights: the first name), contiguous and on the CPU."""
    seen, out = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.device)
        if key not in seen:
            seen.add(key)
            out[name] = t.detach().to("cpu").contiguous()
    return out


def write(where: Path, companions: Companions) -> None:
    """Write `companions` into the folder `where` (created; nothing when there is nothing to write)."""
    if companions == Companions():
        return
    where.mkdir(parents=True, exist_ok=True)
    for name in ("target", "predictor"):
        tensors = getattr(companions, name)
        if tensors is not None:
            save_file(_unique(tensors), where / f"{name}.safetensors")
    if companions.predictor_optimizer is not None:
        torch.save(companions.predictor_optimizer, where / "predictor_optimizer.pt")
    (where / "state.json").write_text(json.dumps(companions.state, indent=1, sort_keys=True))


def read(where: Path, *, target: bool, predictor: bool, predictor_optimizer: bool = False) -> Companions:
    """The parts asked for from the folder `where`; SetupError naming the file when one is missing."""
    def need(name: str) -> Path:
        path = where / name
        if not path.is_file():
            raise SetupError(f"{path} is missing: this checkpoint has no POPO {name.split('.')[0]} (POPO's companions "
                             f"are saved in {FOLDER}/ beside the checkpoint's own files)")
        return path

    state = where / "state.json"
    return Companions(
        target=load_file(need("target.safetensors")) if target else None,
        predictor=load_file(need("predictor.safetensors")) if predictor else None,
        predictor_optimizer=(torch.load(need("predictor_optimizer.pt"), map_location="cpu", weights_only=True)
                             if predictor_optimizer else None),
        state=json.loads(state.read_text()) if state.is_file() else {})
