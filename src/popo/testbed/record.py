"""Record the shipped warm starts (`popo.testbed.shipped.SHIPPED`): rebuild each from scratch on one thread
and write it, with its MANIFEST.json, into the package folder. This is how the shipped set was made:

    python -m popo.testbed.record                 # all of them (about 25 min on one core)
    python -m popo.testbed.record demo-quick      # one
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from popo.config import load_config
from popo.loading import resolve_model_path
from popo.testbed.shipped import SHIPPED, platform, shipped_root, write_manifest


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(SHIPPED)
    torch.set_num_threads(1)  # part of the recorded platform: a thread count can change a reduction's order
    root = shipped_root()
    root.mkdir(exist_ok=True)
    for name in names:
        with tempfile.TemporaryDirectory(prefix="popo-warm-start-") as work:
            config = load_config(None, ["model.name=testbed", f"testbed.cache_dir={work}", *SHIPPED[name]])
            built = Path(resolve_model_path(config, rebuild=True))
            write_manifest(built, platform())
            dest = root / built.name.removesuffix("-rebuilt")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(built), dest)
        print(f"{name}: {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
