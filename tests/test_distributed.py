"""Two processes (accelerate launch, gloo on CPU) train exactly like one process with the whole batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from numerics import REORDER_ABS, REORDER_REL

pytestmark = pytest.mark.slow
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(cache: Path, out: Path, *extra: str) -> list[str]:
    # 2 prompts per step: one per rank, so a rank often samples no positive at all
    return [f"testbed.cache_dir={cache}", "testbed.warmup_steps=200", "testbed.warmup_batch=32",
            "testbed.digits=1", "testbed.test_size=20", "testbed.validation_size=0", "data.eval_source=", "rollout.prompts_per_step=2",
            "rollout.group_size=4", "rollout.max_new_tokens=12", "train.eval_every=0", "train.diag_every=2",
            "train.save_every=2", "train.keep_last=5", "train.progress=false", "train.tensorboard=false",
            "optim.lr=1e-3", "algo.tau=0.5", "model.device=cpu", f"train.out_dir={out}", *extra]


def run(args: list[str], processes: int = 1, launch: Sequence[str] = ("--multi_gpu",)) -> None:
    """`popo ARGS` in one process, or in `processes` under `accelerate launch LAUNCH...` (DDP by default)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "popo", *args]
    else:
        cmd = [str(ACCELERATE), "launch", *launch, f"--num_processes={processes}", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={_free_port()}",
               "-m", "popo", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in lines]


def weights(run_dir: Path, step: int, part: str = "policy") -> dict[str, torch.Tensor]:
    folder = run_dir / "checkpoints" / f"step-{step:06d}"  # the target and the predictor are in popo/
    return load_file(folder / "policy" / "model.safetensors" if part == "policy"
                     else folder / "popo" / f"{part}.safetensors")


# popo.diagnostics' gradient probes: cosines and norm shares of each loss term's gradient
GRADIENT_DIAGNOSTICS = ("grad_share", "grad_cos")


def assert_same_records(a: list[dict], b: list[dict], *, sharded: bool = False) -> None:
    """`b` (several processes) logs what `a` (one process) logged. With `sharded`, the gradient probes are left
    out of the comparison: popo.diagnostics skips them under FSDP (the callers check that they are absent)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        layout = {"positive_rollouts_min_rank", "idle_passes"}  # describe the process split, not the result
        ra, rb = ({k: v for k, v in r.items() if k not in layout} for r in (ra, rb))
        if sharded:
            ra, rb = ({k: v for k, v in r.items() if not k.startswith(GRADIENT_DIAGNOSTICS)} for r in (ra, rb))
        assert ra.keys() == rb.keys(), ra.keys() ^ rb.keys()
        for key in ra.keys() - {"micro_batches"}:  # each rank plans its own micro-batches
            if isinstance(ra[key], int):  # counts (rollouts, positives, tokens): sampled tokens must agree
                assert ra[key] == rb[key], (ra["step"], key)
            elif key.startswith(GRADIENT_DIAGNOSTICS):
                # the direction of a small term's gradient amplifies the summation-order rounding of the
                # gradients (seen: 1.5e-5 relative); a wrong probe would be off by far more than 1e-3
                assert ra[key] == pytest.approx(rb[key], abs=1e-4, rel=1e-3), (ra["step"], key)
            else:  # the same float32 reductions in another order (tests/numerics.py)
                assert ra[key] == pytest.approx(rb[key], abs=REORDER_ABS, rel=REORDER_REL), (ra["step"], key)


def assert_same_weights(a: dict, b: dict) -> None:
    """Adam moves a weight by at most about lr (1e-3 here) per step, and a gradient that differs by
    REORDER_REL relative moves that step by about REORDER_REL * lr = 1e-7 where the gradient is large against
    Adam's eps. Where it is not, Adam's step m / (sqrt(v) + eps) amplifies an absolute gradient difference by
    up to lr / eps, so a coordinate with a near-zero gradient may differ by far more: seen 1.02e-5 after 3 steps
    on an AVX-512 CPU (below 1e-5 on AVX2). The bound, 5e-5, is 20 times below one step's move of lr: a missing
    or doubled gradient reduction moves weights by about lr and still fails it."""
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 5e-5, worst


@pytest.fixture(scope="module")
def cache(warm_testbed_cache) -> Path:
    return Path(warm_testbed_cache)


# GRPO's two-process run is compared with one process in tests/test_dynamic_sampling.py (with refills, which
# also exercises the whole batch's normalisers) and, sharded, in tests/test_fsdp.py: one GRPO run here would be a
# third copy of the same check (30 s on two cores).
@pytest.mark.parametrize("algo", ["popo"])
def test_two_processes_equal_one_process_with_the_whole_batch(cache, tmp_path, algo):
    one, two = tmp_path / "one", tmp_path / "two"
    run(["train", *overrides(cache, one, f"algo.name={algo}", "train.steps=4")])
    run(["train", *overrides(cache, two, f"algo.name={algo}", "train.steps=4")], processes=2)
    a, b = records(one), records(two)
    assert_same_records(a, b)
    assert sum(r["positive_rollouts"] for r in a) > 0, "the warmed-up model should solve something"
    if algo == "popo":  # the case that could hang: one rank with nothing to train while the other trains
        assert any(r["positive_rollouts_min_rank"] == 0 < r["positive_rollouts"] for r in b), b
    for step in (2, 4):
        assert_same_weights(weights(one, step), weights(two, step))
        if algo == "popo":
            assert_same_weights(weights(one, step, "target"), weights(two, step, "target"))


def test_checkpoint_of_two_processes_resumes_in_one(cache, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(["train", *overrides(cache, one, "train.steps=4")])
    run(["train", "--num-processes", "2", *overrides(cache, two, "train.steps=2")])  # the CLI shortcut
    shutil.rmtree(two / "checkpoints" / "step-000004", ignore_errors=True)
    run(["train", "--resume", str(two), "train.steps=4"])
    assert_same_records(records(one), records(two))
    assert_same_weights(weights(one, 4), weights(two, 4))
