"""What a TRL checkpoint holds for POPO beyond TRL's own files: the EMA target and the predictor.

They go to `checkpoint-N/popo/` (`target.safetensors`, `predictor.safetensors`); the predictor's AdamW
state is part of TRL's `optimizer.pt`, since the predictor is a parameter group of TRL's optimizer. With
PEFT the target is an EMA of the adapter tensors (`popo.lora`), so the file holds those only.
"""

from __future__ import annotations

from pathlib import Path

from popo.errors import SetupError
from popo.models import Models, load_part, save_part

FOLDER = "popo"


def save_companions(models: Models, checkpoint: str | Path) -> None:
    """Write the target and the predictor under `checkpoint/popo/`."""
    folder = Path(checkpoint) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("target", models.target), ("predictor", models.predictor)):
        if part is not None:
            save_part(part, folder / f"{name}.safetensors")


def load_companions(models: Models, checkpoint: str | Path) -> None:
    """Restore what `save_companions` wrote; SetupError when the folder or a tensor is missing."""
    folder = Path(checkpoint) / FOLDER
    for name, part in (("target", models.target), ("predictor", models.predictor)):
        if part is None:
            continue
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise SetupError(f"{path} is missing: cannot resume POPO's {name} from {checkpoint}")
        missing, unexpected = load_part(part, path)
        if missing or unexpected:
            raise SetupError(f"{path} does not match POPO's {name}: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
