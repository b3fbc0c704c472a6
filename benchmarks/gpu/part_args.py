"""Command-line plumbing shared by the GPU check's parts (decode.py, parity.py, vs_trl.py): the common
options, the defaults that differ between a GPU run and the `--cpu` dry run, and the CUDA requirement."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser(doc: str, *, model: bool) -> argparse.ArgumentParser:
    """`--out` and `--cpu` (and `--model` when the part runs on part 1's model folder)."""
    out = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model:
        out.add_argument("--model", type=Path, required=True, help="a save_pretrained folder (gpu_check --model-dir)")
    out.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    out.add_argument("--cpu", action="store_true", help="CPU, fp32, tiny sizes: a check of the script, not of CUDA")
    return out


def finish(parser: argparse.ArgumentParser, args: argparse.Namespace, defaults: dict[str, tuple]) -> None:
    """Options left unset take `defaults[name]` = (GPU value, --cpu value); without --cpu, CUDA must be there."""
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.cpu else full)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        parser.error(f"no CUDA device for torch {torch.__version__} ({sys.executable}); use --cpu")
