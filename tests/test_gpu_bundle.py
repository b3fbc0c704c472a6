"""The GPU check's bundle and its dry run (benchmarks/gpu/, issue 17).

`test_dry_run` is THE DRY RUN (marker `gpu_dry_run`, about 2 minutes): the wheel folder rebuilt by its one
command (`bundle.py`, from pip's cache after the first time), a fresh virtual environment that sees only
torch 2.13.0 (CPU) and pip, a network namespace with nothing but loopback, `pip install --no-index` from the
folder, and `run.py --cpu` end to end. The other tests are fast checks of the pieces: the pins cover popo's
run-time requirements, the trainer and evaluation paths import none of the packages left out of the
bundle, and `run.py` runs every part after a failure and reports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))
import bundle  # noqa: E402
import decode  # noqa: E402
import dry_run  # noqa: E402
import run  # noqa: E402

LEFT_OUT = ("datasets", "pyarrow", "pandas", "matplotlib", "tensorboard", "scipy", "statsmodels")


def pinned_names(name: str) -> set[str]:
    return {bundle.canonical(p.split("==")[0]) for p in bundle.read_pins(name)}


def test_pins_cover_popos_runtime_requirements():
    pinned = pinned_names("requirements.txt")
    needed = {name for name, _ in bundle._requirements("popo")} - {"torch", *bundle.LAZY}
    assert needed <= pinned, f"not pinned: {sorted(needed - pinned)}; run `python benchmarks/gpu/bundle.py --lock`"
    assert not pinned & {"torch", *LEFT_OUT}
    assert "trl" in pinned_names("trl.txt") and not pinned_names("trl.txt") & {"pyarrow", "pandas"}


def test_trainer_and_evaluation_paths_import_nothing_left_out_of_the_bundle():
    code = ("import sys, popo.build, popo.trainer, popo.eval_cli, popo.evaluate, popo.rollout.hf, popo.fsdp\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({LEFT_OUT!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    loaded = out.stdout.strip().splitlines()[-1]
    # transformers imports scipy by itself when it is installed; popo must not need it
    assert loaded in ("[]", "['scipy']"), loaded


def test_source_digest_follows_the_sources_only(tmp_path):
    (tmp_path / "src" / "popo" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "src" / "popo" / "a.py").write_text("x = 1\n")
    before = bundle.source_digest(tmp_path)
    (tmp_path / "src" / "popo" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert bundle.source_digest(tmp_path) == before
    (tmp_path / "src" / "popo" / "a.py").write_text("x = 2\n")
    assert bundle.source_digest(tmp_path) != before


def test_prune_keeps_only_pinned_versions(tmp_path):
    for name in ("numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl", "numpy-2.3.0-cp312-cp312-linux_x86_64.whl",
                 "popo-0.1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    bundle.prune(tmp_path, ["numpy==2.4.6"])
    assert [p.name for p in tmp_path.iterdir()] == ["numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl"]


def test_run_goes_on_after_a_failed_part_and_reports_it(tmp_path, monkeypatch):
    """Stand-in commands for the parts: one fails, one runs out of time, the others write their report."""
    def writes(name: str, ok: bool) -> list[str]:
        report = json.dumps({"ok": ok})
        return [sys.executable, "-c", f"import pathlib; p = pathlib.Path({str(tmp_path / name)!r}); "
                f"p.with_suffix('.json').write_text({report!r}); p.with_suffix('.md').write_text('# {name}\\n')"]

    commands = {"model": writes("model", True), "check": [sys.executable, "-c", "import sys; sys.exit(3)"],
                "decode": [sys.executable, "-c", "import time; time.sleep(30)"],
                "parity": writes("parity", False), "trl": writes("trl", True)}
    monkeypatch.setattr(run, "part_commands", lambda args, work: commands)
    monkeypatch.setitem(run.BUDGET_S, "decode", 6)
    out = tmp_path / "out"
    assert run.main(["--out", str(out), "--no-install", "--keep", str(tmp_path)]) == 1
    report = json.loads((out / "gpu_report.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert status == {"install": "skipped", "model": "ok", "check": "failed", "decode": "timeout",
                      "parity": "failed", "trl": "ok"}
    markdown = (out / "gpu_report.md").read_text()
    assert "Overall: **FAIL**" in markdown and "## trl" in markdown and "exit status 3" in markdown
    assert "time limit of 6 s reached" in (out / "gpu_logs.txt").read_text()


@pytest.mark.gpu_dry_run
def test_dry_run(tmp_path):
    """The bundle installs into a fresh, offline venv and runs there: the install, the model and two parts.
    The `check` (FSDP launches) and `trl` parts are left to `make gpu-dry-run` (50 s of the test's 100 s):
    their code runs in tests/test_fsdp.py and tests/test_trl_integration.py, and what they import is checked
    against the bundle by test_trainer_and_evaluation_paths_import_nothing_left_out_of_the_bundle."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(GPU / "dry_run.py"), "--out", str(out), "--work", str(work),
                           "--only", "decode", "parity"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "dry_run.json").read_text())
    assert summary["network_isolated"] == bool(dry_run.isolated_prefix())
    # the folder travels beside the tracked files; it fits once the machine's own numpy is used (--omit numpy)
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    numpy_mb = sum(size for name, size in manifest["wheels"].items() if name.startswith("numpy-")) / 1e6
    assert summary["bundle_mb"] - numpy_mb <= manifest["limit_mb"]
    report = json.loads((out / "gpu_report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert report["ok"] and all(s["status"] == "ok" for s in steps.values()), report["steps"]
    # installed from the folder into the fresh venv, which has nothing left out of the bundle
    assert Path(steps["install"]["result"]["imports"]["popo"]).is_relative_to(work / "venv")
    site = Path(steps["install"]["result"]["imports"]["popo"]).parents[1]
    assert (site / "transformers").is_dir() and not any((site / name).exists() for name in LEFT_OUT)
    assert steps["install"]["result"]["trl_installed"] is False  # datasets needs pyarrow: not in the bundle
    parity = steps["parity"]["result"]["comparison"]
    assert parity["rewards_equal"] and parity["losses_close"] and parity["steps_with_loss"] > 0
    assert set(steps) == {"install", "model", "decode", "parity"}
    assert {r["path"] for r in steps["decode"]["result"]["rows"]} == set(decode.PATHS)
