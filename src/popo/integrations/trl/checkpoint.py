"""What a TRL checkpoint holds for POPO beyond TRL's own files: the EMA target and the predictor.

They go to `checkpoint-N/popo/` (`target.safetensors`, `predictor.safetensors`); the predictor's AdamW
state is part of TRL's `optimizer.pt`, since the predictor is a parameter group of TRL's optimizer. With
PEFT the target is popo's `AdapterEMA`, so the file holds the adapter tensors only.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, load_model, save_model

from popo.errors import SetupError
from popo.lora import AdapterEMA
from popo.models import Models

FOLDER = "popo"


def save_companions(models: Models, checkpoint: str | Path) -> None:
    """Write the target and the predictor under `checkpoint/popo/`."""
    folder = Path(checkpoint) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(models.target, AdapterEMA):
        models.target.save_pretrained(folder)  # writes model.safetensors
        (folder / "model.safetensors").replace(folder / "target.safetensors")
    elif models.target is not None:
        save_model(models.target, str(folder / "target.safetensors"))  # tied tensors are stored once
    if models.predictor is not None:
        save_model(models.predictor, str(folder / "predictor.safetensors"))


def load_companions(models: Models, checkpoint: str | Path) -> None:
    """Restore what `save_companions` wrote; SetupError when the folder or a tensor is missing."""
    folder = Path(checkpoint) / FOLDER
    for name, part in (("target", models.target), ("predictor", models.predictor)):
        if part is None:
            continue
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise SetupError(f"{path} is missing: cannot resume POPO's {name} from {checkpoint}")
        if isinstance(part, AdapterEMA):
            missing, unexpected = part.load_state_dict(load_file(path))
        else:
            missing, unexpected = load_model(part, str(path), strict=False)
        if missing or unexpected:
            raise SetupError(f"{path} does not match POPO's {name}: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
