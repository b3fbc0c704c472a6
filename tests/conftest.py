"""Shared fixtures and options.

`--fuzz-long` (or the environment variable POPO_FUZZ_LONG=1) runs the verifier fuzz tests with many more
examples than the short CI budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the hostile-text fuzz tests long (also: POPO_FUZZ_LONG=1)")
    parser.addoption("--require-verl", action="store_true", default=False,
                     help="verl's environment: fail, rather than skip the verl tests, when verl does not import")


def pytest_configure(config):
    if config.getoption("--fuzz-long"):
        os.environ["POPO_FUZZ_LONG"] = "1"  # read when the fuzz tests' hypothesis settings are built
    if config.getoption("--require-verl"):
        import verl  # noqa: F401  (an import error here fails the run instead of skipping every verl test)


@pytest.fixture(scope="session")
def fuzz_long(request) -> bool:
    return bool(request.config.getoption("--fuzz-long")) or os.environ.get("POPO_FUZZ_LONG") == "1"


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def tiny_testbed(tmp_path_factory) -> list[str]:
    """Overrides for a very small testbed run (1-digit problems, 20 warm-up steps cached once per session,
    CPU, 4 prompts x 2 rollouts, 8 new tokens); every rollout counts as positive so every step updates.

    The warm-up runs in a one-thread subprocess: on two shared cores a tiny model trains far faster on
    one thread than on two contended ones."""
    cache = tmp_path_factory.mktemp("testbed-cache")
    testbed = [f"testbed.cache_dir={cache}", "testbed.warmup_steps=20", "testbed.warmup_batch=16",
               "testbed.digits=1", "testbed.test_size=6", "testbed.train_size=64",
               "testbed.validation_size=0"]
    subprocess.run([sys.executable, "-m", "popo", "sft", *testbed], check=True, capture_output=True,
                   env={**os.environ, **ONE_THREAD_ENV}, timeout=600)
    return [*testbed, "data.eval_size=6", "model.device=cpu", "rollout.prompts_per_step=4",
            "rollout.group_size=2", "rollout.max_new_tokens=8", "algo.reward_threshold=-1", "optim.lr=1e-3",
            "train.eval_every=0", "train.diag_every=0", "train.progress=false", "train.tensorboard=false"]


@pytest.fixture
def one_thread():
    """torch on one thread for the test (much faster for tiny models on shared cores), then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# validation_size=0: the 1-digit universe is small, and the golden runs keep the layout they were recorded with
WARM_TESTBED = ["testbed.warmup_steps=200", "testbed.warmup_batch=32", "testbed.digits=1", "testbed.test_size=20",
                "testbed.validation_size=0"]


WARM_STARTS = Path(__file__).parent / "golden" / "warm_starts"


@pytest.fixture(scope="session")
def warm_testbed_cache(tmp_path_factory) -> str:
    """A testbed cache holding the 1-digit model after 200 warm-up steps (it solves some problems, so RL
    steps have positives and negatives). It is the copy in tests/golden/warm_starts, the same weights on every
    machine (tests/test_shipped_warm_starts.py rebuilds it); tests pass `testbed.cache_dir=<this>` with the
    `WARM_TESTBED` overrides to reuse it."""
    from popo.testbed.shipped import install

    cache = tmp_path_factory.mktemp("warm-testbed")
    (name,) = [p.name for p in WARM_STARTS.iterdir() if p.name.startswith("testbed-")]
    assert install(name, cache / name, log=lambda message: None, root=WARM_STARTS)
    return str(cache)


def warm_testbed_config(cache_dir: str, out_dir, *extra: str):
    """A short run on the warm testbed (8 prompts x 4 rollouts, 3 steps, no periodic eval or saves);
    `extra` overrides come last and win."""
    from popo.config import load_config

    return load_config(None, [
        f"testbed.cache_dir={cache_dir}", *WARM_TESTBED, "data.eval_size=20", "rollout.prompts_per_step=8",
        "rollout.group_size=4", "rollout.max_new_tokens=12", "train.steps=3", "train.eval_every=0",
        "train.diag_every=1", "train.save_every=0", "train.progress=false", "train.tensorboard=false",
        f"train.out_dir={out_dir}", *extra])


def run_with_deadline(fn, seconds: float):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return within `seconds`.
    A hang guard, not a timing test."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # re-raised below, in the test's thread
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"call did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests (marked slow or gpu_dry_run: 15-110 s each) first, the rest in their order. xdist
    hands each worker a contiguous share of this list, so the Makefile adds `--dist worksteal`: workers that
    finish their share take queued long tests from the busy one, and no long test starts last."""
    long = [item for item in items if item.get_closest_marker("slow") or item.get_closest_marker("gpu_dry_run")]
    rest = [item for item in items if item not in set(long)]
    items[:] = long + rest


def pytest_xdist_auto_num_workers(config):
    """`pytest -n auto` (the Makefile's): one worker per core this process may use. More workers cost more
    than they fill: the two-process tests' gloo ranks poll while they wait, and on 2 cores 3 workers spent
    13.8 CPU-minutes on the suite where 2 spent 12.5."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
