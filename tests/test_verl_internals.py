"""popo.integrations.verl.internals: a verl that lacks one of the private names popo's engine uses is refused at
registration, in one line naming the version, the missing name and the tested window. Runs without verl (a
fake verl package is put first on the path of a fresh process) and in verl's environment alike."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from popo.integrations.verl.internals import PRIVATE_NAMES, TESTED_VERL

FAKE = {
    "verl/__init__.py": '__version__ = "0.42.0"\n',
    "verl/workers/__init__.py": "",
    "verl/workers/engine/__init__.py": "",
    "verl/workers/engine/base.py": "class EngineRegistry:\n    _engines = {}\n",
    "verl/workers/engine/fsdp/__init__.py": "",
    "verl/workers/engine/fsdp/transformer_impl.py": textwrap.dedent("""
        class FSDPEngine:
            def __init__(self):
                self._autocast_dtype = None
                self._uses_fsdp2_cpu_offload_policy: bool = False

            def _build_module(self):
                pass

            def _build_fsdp_module(self, module):
                pass


        class FSDPEngineWithLMHead(FSDPEngine):
            pass  # no _gradient_sync_context: renamed in this "release"
        """),
}


def _fake_verl(root: Path) -> dict[str, str]:
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "VERL_USE_EXTERNAL_PLUGINS": "none"}


def test_a_verl_missing_one_private_name_is_refused_in_one_line(tmp_path):
    code = "from popo.integrations.verl.plugin import register\nregister()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_fake_verl(tmp_path),
                         timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == ("popo.errors.SetupError: popo's verl plugin cannot run on verl 0.42.0: verl internals it uses "
                    "are missing (FSDPEngineWithLMHead._gradient_sync_context); it is tested with "
                    f"verl{TESTED_VERL}"), out.stderr[-2000:]


def test_the_fake_lacks_exactly_one_of_the_listed_names(tmp_path):
    """Every other listed name is found, as a class attribute or as an attribute `__init__` assigns."""
    code = ("from popo.integrations.verl.internals import missing_private_names\n"
            "print(missing_private_names())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_fake_verl(tmp_path),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['FSDPEngineWithLMHead._gradient_sync_context']"
    assert len(PRIVATE_NAMES) == 6
