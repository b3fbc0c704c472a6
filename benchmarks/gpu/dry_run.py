"""The GPU check's dry run: the whole path of a GPU machine, on CPU, here.

    python benchmarks/gpu/dry_run.py --out runs/gpu-dry-run      # `make gpu-dry-run`; tests/test_gpu_bundle.py

1. Builds the wheel folder with its one command (`bundle.py`), for the Python running this script.
2. Makes a fresh virtual environment (without pip) that sees only torch and pip: this environment's torch
   2.13.0 (CPU) with its own requirements, and its pip, linked in through a .pth file, as a GPU machine's
   Python holds its CUDA torch. Nothing else of this environment is visible there (no transformers,
   datasets, matplotlib, tensorboard, ...). Linking takes a second where installing torch takes a minute.
3. Runs `run.py --cpu` with that environment's Python in a network namespace of its own (loopback only,
   where `unshare` and `ip` work; else with the network present, which pip's `--no-index` and the
   offline flags leave unused): popo and its requirements are installed from the folder alone.

Exit status: run.py's. Its report lands in --out (gpu_report.md, gpu_report.json, gpu_logs.txt), beside
dry_run.json with the time of each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundle  # noqa: E402

HERE = Path(__file__).resolve().parent


def torch_only_folder(dest: Path) -> list[str]:
    """`dest` filled with links to this environment's torch, its requirements and pip (packages, modules and
    .dist-info folders), nothing else; returns the distributions linked."""
    names = sorted(bundle.closure([("torch", ()), ("pip", ())], set()))
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        dist = metadata.distribution(name)
        top = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for entry in top:
            source = Path(dist.locate_file(entry))
            if source.exists() and not (dest / entry).exists():
                (dest / entry).symlink_to(source)
    return names


def fresh_venv(folder: Path, torch_folder: Path) -> Path:
    """A new virtual environment that sees the linked folder and nothing else; its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "torch_only.pth").write_text(str(torch_folder) + "\n")
    return python


def isolated_prefix() -> list[str]:
    """A command prefix that runs in a new network namespace with only loopback up, or [] where it cannot."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    prefix = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "isolated"]
    probe = subprocess.run(prefix + ["true"], capture_output=True)
    return prefix if probe.returncode == 0 else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where run.py writes its report")
    parser.add_argument("--work", type=Path, help="the bundle, the venv and the links (default: a temporary folder)")
    parser.add_argument("--only", nargs="+", help="run.py's --only: these parts after the install and the model")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="popo-gpu-dry-run-"))
    times, python_version = {}, sysconfig.get_python_version()
    try:
        begin = time.perf_counter()
        manifest = bundle.build(work / "bundle", (python_version,))
        times["bundle_s"] = time.perf_counter() - begin
        begin = time.perf_counter()
        linked = torch_only_folder(work / "torch-only")
        python = fresh_venv(work / "venv", work / "torch-only")
        times["venv_s"] = time.perf_counter() - begin
        prefix = isolated_prefix()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        begin = time.perf_counter()
        code = subprocess.run([*prefix, str(python), str(HERE / "run.py"), "--cpu", "--bundle", str(work / "bundle"),
                               "--out", str(args.out), *(["--only", *args.only] if args.only else [])],
                              cwd=bundle.ROOT, env=env).returncode
        times["run_s"] = time.perf_counter() - begin
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"returncode": code, "network_isolated": bool(prefix), "python": python_version,
               "bundle_mb": manifest["total_mb"], "torch_only": linked, **times}
    (args.out / "dry_run.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"dry run: exit {code}; bundle {times['bundle_s']:.0f} s ({manifest['total_mb']} MB), venv "
          f"{times['venv_s']:.0f} s, run {times['run_s']:.0f} s; network "
          f"{'isolated' if prefix else 'NOT isolated (no unshare)'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
