"""The GPU check in one command: install popo from the wheel folder, then run the four parts, in 10 minutes.

On a GPU machine, from the repository root, with the wheel folder built here (`make gpu-bundle`) and copied
along with the working tree (nothing is downloaded there):

    python3 benchmarks/gpu/run.py --out OUT

1. install: `pip install --no-index --find-links gpu-bundle` of `requirements.txt`, then popo's wheel
   (`--no-deps`: torch is the machine's own), then TRL's wheels (may fail: see vs_trl.py); pip reads no
   configuration file, so nothing but the folder is used. Then popo must import from site-packages, and
   its wheel must have been built from this tree's sources (the folder's manifest holds their hash).
2. model: a random Qwen2 of Qwen2.5-0.5B's shape in bf16, built once and used by parts 1, 2 and 4.
3. part 1, `benchmarks/gpu_check.py`: FSDP2, bf16, POPO and GRPO: tokens/s, MFU, peak memory, finite losses.
4. part 2, `decode.py`: popo's HF engine (its loop and its static-cache path) against `generate` with a static
   and a dynamic cache, 64 and 256 rows.
5. part 3, `parity.py`: 20 POPO steps on the testbed in fp32, CUDA against CPU.
6. part 4, `vs_trl.py`: TRL's GRPOTrainer against popo's GRPO and POPO steps.

Every step runs in its own process under its own time limit (`BUDGET_S`, 590 s in all) and runs even when
an earlier one failed. `--out` receives three files: gpu_report.json (every step's status, time, error and
numbers), gpu_report.md (a status table and each part's tables) and gpu_logs.txt (each step's output).
Exit status 0 when every step passed (TRL skipped for want of its requirements counts as passed).

`--cpu` runs everything on CPU at tiny sizes: the dry run (tests/test_gpu_bundle.py runs it in a fresh
virtual environment that holds only torch, without network).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import bundle  # noqa: E402  (standard library only, like this script)
# decode: 141 s for three paths on the H200 (2026-12-04, mostly compiling the static cache), and a fourth path
BUDGET_S = {"install": 50, "model": 40, "check": 150, "decode": 200, "parity": 60, "trl": 90}  # 590 s in all
TITLES = {"install": "install from the wheel folder", "model": "build the random Qwen2 (0.5B; tiny with --cpu)",
          "check": "part 1: FSDP2 bf16 POPO and GRPO", "decode": "part 2: decode throughput",
          "parity": "part 3: CUDA against CPU", "trl": "part 4: TRL against popo"}
QUIET_ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
IMPORT_CHECK = """import json, popo, torch, transformers, accelerate, math_verify
print(json.dumps({"popo": popo.__file__, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "transformers": transformers.__version__, "accelerate": accelerate.__version__}))"""


def child_env() -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV}
    env.setdefault("OMP_NUM_THREADS", str(min(8, os.cpu_count() or 1)))
    return env


def pip_env() -> dict[str, str]:
    """No pip configuration file or PIP_* variable: only the command line (the wheel folder) counts."""
    env = {k: v for k, v in child_env().items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def install_commands(folder: Path) -> list[tuple[str, list[str]]]:
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), "--no-cache-dir",
           "--disable-pip-version-check", "--no-input", "--no-compile", "--quiet"]
    wheels = sorted(folder.glob("popo-*.whl"))
    return [("requirements", pip + ["-r", str(folder / "requirements.txt")]),
            ("popo", pip + ["--no-deps", "--force-reinstall", *map(str, wheels[-1:])]),
            ("trl", pip + ["-r", str(folder / "trl.txt")])]


def install(folder: Path, log, timeout: float) -> dict:
    """Install from `folder` into this Python; returns the step's result (TRL's failure is not the step's)."""
    begin, result = time.monotonic(), {"ok": True}
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
    here = ".".join(platform.python_version_tuple()[:2])
    if manifest and here not in manifest.get("pythons", []):
        result["hint"] = (f"the wheel folder was built for Python {', '.join(manifest['pythons'])}, this is {here}: "
                          f"rebuild it with `python benchmarks/gpu/bundle.py --python {here}`")
        log(result["hint"] + "\n")
    if manifest.get("source_digest") != bundle.source_digest(ROOT):  # the numbers would be another popo's
        result.update(ok=False, stale="popo's wheel was built from other sources than this tree: rebuild the "
                                      "folder (`make gpu-bundle`) after the last change to src/")
        log(result["stale"] + "\n")
    for name, cmd in install_commands(folder):
        output: list[str] = []
        left = max(timeout - (time.monotonic() - begin), 1)
        code = run_logged(cmd, lambda text: (output.append(text), log(text)), left, env=pip_env())
        if code:
            errors = [line for line in "".join(output).splitlines() if line.startswith("ERROR:")]
            result[f"{name}_error"] = f"pip exit {code}: " + (errors[-1] if errors else last_line("".join(output)))
            result["ok"] = result["ok"] and name == "trl"
    result["trl_installed"] = "trl_error" not in result
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, env=child_env(),
                         cwd=tempfile.gettempdir())  # not the repository root: `src/` must not be importable
    log(out.stdout + out.stderr)
    if out.returncode:
        result.update(ok=False, import_error=(out.stderr.strip().splitlines() or ["?"])[-1])
    else:
        result["imports"] = json.loads(out.stdout.strip().splitlines()[-1])
        if Path(result["imports"]["popo"]).resolve().is_relative_to(ROOT / "src"):
            result.update(ok=False, import_error="popo was imported from the source tree, not from the install")
    return result


def run_logged(cmd: list[str], log, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run `cmd` from the repository root with its output going to `log`; 124 when it ran out of time, after
    killing its whole process group (a launcher's workers must not hold the GPU for the next part)."""
    log("$ " + " ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or child_env(), start_new_session=True)
    try:
        log(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log(proc.communicate()[0] + f"[time limit of {timeout:.0f} s reached]\n")
        return 124
    return proc.returncode


def part_commands(args, work: Path) -> dict[str, list[str]]:
    """The command of every step after the install; each part writes work/<name>.json and .md."""
    py, model, tiny = sys.executable, str(work / "model"), ["--cpu"] if args.cpu else []
    launch_timeout = str(20 * 60 if args.cpu else (args.budget["check"] - 20) // 2)  # two launches
    return {
        "model": [py, "benchmarks/gpu_check.py", "--model-dir", model, "--build-only", *(["--tiny"] if args.cpu else [])],
        "check": [py, "benchmarks/gpu_check.py", "--model-dir", model, "--out", str(work / "check"),
                  "--timeout", launch_timeout, *(["--tiny"] if args.cpu else [])],
        "decode": [py, str(HERE / "decode.py"), "--model", model, "--out", str(work / "decode"), *tiny],
        "parity": [py, str(HERE / "parity.py"), "--out", str(work / "parity"), *tiny],
        "trl": [py, str(HERE / "vs_trl.py"), "--model", model, "--out", str(work / "trl"), *tiny],
    }


def read_result(work: Path, name: str) -> tuple[dict | None, str | None]:
    """A part's JSON and markdown (gpu_check writes them one folder down)."""
    stem = work / "check" / "gpu_check" if name == "check" else work / name
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    result = json.loads(json_path.read_text()) if json_path.is_file() else None
    return result, md_path.read_text() if md_path.is_file() else None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def install_note(result: dict) -> str:
    notes = [result[k] for k in ("hint", "stale", "requirements_error", "popo_error", "import_error") if k in result]
    if "trl_error" in result:
        notes.append("TRL not installed: " + result["trl_error"])
    return "; ".join(notes)


def report_markdown(report: dict, sections: dict[str, str]) -> str:
    lines = [f"# GPU check ({'CPU dry run, tiny sizes' if report['cpu'] else 'CUDA'})", "",
             f"Command (from the repository root): `{report['command']}`", "",
             f"Python {report['python']} ({report['executable']}); {report['total_s']:.0f} s of the "
             f"{report['budget_s']} s budget. Overall: **{'PASS' if report['ok'] else 'FAIL'}**", "",
             "| step | status | s | limit s | note |", "|---|---|---:|---:|---|"]
    for s in report["steps"]:
        lines.append(f"| {TITLES[s['name']]} | {s['status']} | {s['wall_s']:.1f} | {s['timeout_s']:.0f} | "
                     f"{s.get('note', '').replace('|', '/')} |")
    for text in sections.values():  # each part's own report, its headings one level down
        lines += [""] + [("#" + line) if line.startswith("#") else line for line in text.splitlines()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_report.json/.md and gpu_logs.txt")
    parser.add_argument("--bundle", type=Path, default=ROOT / "gpu-bundle", help="the wheel folder (bundle.py)")
    parser.add_argument("--cpu", action="store_true", help="everything on CPU at tiny sizes (the dry run)")
    parser.add_argument("--no-install", action="store_true", help="use what is installed (a second try)")
    parser.add_argument("--only", nargs="+", choices=list(BUDGET_S)[2:], help="run only these parts")
    parser.add_argument("--keep", type=Path, help="keep the parts' own files (and the model) in this folder")
    parser.add_argument("--limit", nargs="+", default=[], metavar="STEP=S",
                        help=f"another time limit for a step, e.g. check=230 (defaults: {BUDGET_S})")
    args = parser.parse_args(argv)
    args.budget = dict(BUDGET_S)
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in BUDGET_S or not seconds.isdigit():
            parser.error(f"--limit {item}: expected STEP=SECONDS with STEP one of {', '.join(BUDGET_S)}")
        args.budget[name] = int(seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="popo-gpu-run-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = (args.out / "gpu_logs.txt").open("w")
    started, steps, sections = time.monotonic(), [], {}
    commands = part_commands(args, work)
    names = ["install", "model", *(args.only or list(BUDGET_S)[2:])]
    deadline = started + sum(args.budget[name] for name in names)
    for name in names:
        timeout = min(args.budget[name], deadline - time.monotonic())
        step = {"name": name, "timeout_s": max(timeout, 0.0), "wall_s": 0.0}
        steps.append(step)
        if name == "install" and args.no_install:
            step.update(status="skipped", note="--no-install")
            continue
        if timeout < 5:
            step.update(status="not run", note="no time left in the budget")
            continue
        logs.write(f"\n===== {TITLES[name]} =====\n")
        output: list[str] = []
        log = lambda text: (output.append(text), logs.write(text), logs.flush())  # noqa: E731
        begin = time.monotonic()
        if name == "install":
            result, text = install(args.bundle, log, timeout), None
            code, note = 0 if result["ok"] else 1, install_note(result)
        else:
            code = run_logged(commands[name], log, timeout)
            result, text = read_result(work, name)
            note = ("the part reported FAIL: see its section" if result and result.get("ok") is False
                    else f"exit status {code}: {last_line(''.join(output))}" if code else "")
        step["wall_s"] = time.monotonic() - begin
        failed = code != 0 or (result is not None and result.get("ok") is False)
        step["status"] = "timeout" if code == 124 else "failed" if failed else "ok"
        step.update(returncode=code, note=note, result=result)
        if text:
            sections[name] = text
        print(f"{TITLES[name]}: {step['status']} ({step['wall_s']:.0f} s) {step['note']}", flush=True)
    for log_file in sorted((work / "check").glob("*.log")):  # gpu_check's launch logs
        logs.write(f"\n===== {log_file.name} (part 1) =====\n{log_file.read_text(errors='replace')}")
    logs.close()
    if args.keep is None:  # the 0.5B model alone is 1 GB
        shutil.rmtree(work, ignore_errors=True)
    ok = all(s["status"] in ("ok", "skipped") for s in steps)
    report = {"ok": ok, "cpu": args.cpu, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "python": platform.python_version(), "executable": sys.executable,
              "total_s": time.monotonic() - started, "budget_s": sum(args.budget[name] for name in names), "steps": steps}
    (args.out / "gpu_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "gpu_report.md").write_text(report_markdown(report, sections))
    print(f"wrote {args.out / 'gpu_report.md'}, gpu_report.json and gpu_logs.txt; overall "
          f"{'PASS' if ok else 'FAIL'} in {report['total_s']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
