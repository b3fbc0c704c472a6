"""Warm-started testbed models shipped with the package, so every machine starts from the same weights.

The supervised warm-up (`popo.testbed.sft`) is float32 CPU arithmetic: rebuilt on another instruction set
(AVX2 against AVX512) or torch version, its hundreds of Adam steps amplify the rounding differences into a
different model (on countdown: start greedy accuracy 0.08 on one machine, 0.13 on another). The demo, its
quick mode and the default `popo train` configurations therefore start from copies of the warm-up built once
and shipped in `popo/testbed/warm_starts/testbed-<cache key>/`, each file checked against `MANIFEST.json`
(sha256, and the platform that built it) before it is installed into the testbed cache.

`popo sft --rebuild` still builds any warm start from scratch, and `popo sft --rebuild --check` compares the
rebuilt weights with the shipped copy: bit for bit on the recording platform, and as a distance elsewhere.
`python -m popo.testbed.record` rebuilds the whole shipped set (`SHIPPED`), as done to record it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from popo.errors import SetupError

MANIFEST = "MANIFEST.json"

# The configurations whose warm-up is shipped (each is `popo sft` overrides on top of the defaults):
# the default `popo train` (addition), `testbed.task=countdown`, the demo's start (study v3's 3-number
# countdown with numbers up to 20, 800 steps), `popo demo --quick` (3-number countdown, 200 steps) and study v4's part c
# (4-number countdown, 800 steps; docs/results/study_v4/task_c.sh). The demo's must match
# `popo.study.demo` (tests/test_shipped_warm_starts.py checks that every one of them resolves to a shipped copy).
SHIPPED = {
    "addition": [],
    "countdown": ["testbed.task=countdown"],
    "demo": ["testbed.task=countdown", "testbed.numbers=3", "testbed.max_number=20", "testbed.warmup_steps=800",
             "testbed.test_size=2000", "testbed.validation_size=500"],  # study v3's task (and the demo's)
    "demo-quick": ["testbed.task=countdown", "testbed.numbers=3", "testbed.test_size=300", "testbed.validation_size=200",
                   "testbed.warmup_steps=200"],
    "study-v4-c": ["testbed.task=countdown", "testbed.numbers=4", "testbed.max_number=20", "testbed.warmup_steps=800",
                   "testbed.test_size=2000", "testbed.validation_size=500"],  # study v4's harder task (part c)
}


def platform() -> dict[str, str]:
    """What decides the bits of a float32 CPU warm-up: torch's version and the CPU kernels it dispatches to."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": str(torch.get_num_threads())}


def shipped_root() -> Path:
    return Path(str(resources.files("popo.testbed") / "warm_starts"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(folder: Path, built_on: dict[str, str]) -> None:
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"platform": built_on, "sha256": files}, indent=1) + "\n")


def verify(folder: Path) -> dict:
    """The folder's manifest, after checking every listed file's sha256; a mismatch is an error naming the file."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for name, digest in manifest["sha256"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            raise SetupError(f"shipped warm start {folder}: {name} is missing or does not match its sha256 in "
                             f"{MANIFEST}; reinstall popo or rebuild it with `popo sft --rebuild`")
    return manifest


def install(name: str, dest: Path, log: Callable[[str], None] = print, root: Path | None = None) -> bool:
    """Copy the shipped warm start `name` (a `testbed-<key>` folder name) to `dest` if popo ships it;
    False when it does not. The copy is checked and then renamed into place, so a reader never sees half of it."""
    source = (root or shipped_root()) / name
    if not (source / MANIFEST).is_file():
        return False
    manifest = verify(source)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    built = manifest["platform"]
    log(f"testbed: installed the shipped warm start {name} (built with torch {built['torch']} on "
        f"{built['cpu']}) -> {dest}")
    return True


def weight_distance(a: Path, b: Path) -> dict[str, float]:
    """How far two saved models' weights are apart: the largest absolute difference, and the relative
    L2 distance ||a - b|| / ||b|| over all parameters; both 0 when the files are bit-identical."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if wa.keys() != wb.keys():
        raise SetupError(f"{a} and {b} hold different parameters")
    diff = sum(float((wa[k].double() - wb[k].double()).pow(2).sum()) for k in wb) ** 0.5
    norm = sum(float(wb[k].double().pow(2).sum()) for k in wb) ** 0.5
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wb)
    return {"max_abs": worst, "rel_l2": diff / norm}


def check_rebuilt(path: Path, log: Callable[[str], None] = print) -> int:
    """`popo sft --rebuild --check`: how the rebuilt warm start at `path` (`testbed-<key>-rebuilt`) compares
    with the shipped copy; 1 when they differ on the platform that recorded it, else 0."""
    shipped = shipped_root() / path.name.removesuffix("-rebuilt")
    if not (shipped / MANIFEST).is_file():
        log(f"check: popo ships no warm start for this configuration ({shipped.name}); nothing to compare")
        return 0
    recorded, here = verify(shipped)["platform"], platform()
    distance = weight_distance(path, shipped)
    same = distance["max_abs"] == 0.0
    log(f"check: rebuilt on {here}, shipped built on {recorded}: "
        + ("bit-identical weights" if same else
           f"max |difference| {distance['max_abs']:.3g}, relative L2 distance {distance['rel_l2']:.3g}"))
    if recorded == here and not same:
        log("check: FAILED: the same platform should rebuild the shipped weights bit for bit")
        return 1
    return 0
