"""Shared fixtures and options.

`--fuzz-long` (or the environment variable POPO_FUZZ_LONG=1) runs the verifier fuzz tests with many more
examples than the short CI budget.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the hostile-text fuzz tests long (also: POPO_FUZZ_LONG=1)")


def pytest_configure(config):
    if config.getoption("--fuzz-long"):
        os.environ["POPO_FUZZ_LONG"] = "1"  # read when the fuzz tests' hypothesis settings are built


@pytest.fixture(scope="session")
def fuzz_long(request) -> bool:
    return bool(request.config.getoption("--fuzz-long")) or os.environ.get("POPO_FUZZ_LONG") == "1"


@pytest.fixture(scope="session")
def tiny_testbed(tmp_path_factory) -> list[str]:
    """Overrides for a very small testbed run (1-digit problems, 20 warm-up steps cached once per session,
    CPU, 4 prompts x 2 rollouts, 8 new tokens); every rollout counts as positive so every step updates."""
    cache = tmp_path_factory.mktemp("testbed-cache")
    return [
        f"testbed.cache_dir={cache}", "testbed.warmup_steps=20", "testbed.warmup_batch=16", "testbed.digits=1",
        "testbed.test_size=6", "testbed.train_size=64", "data.eval_size=6", "model.device=cpu",
        "rollout.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=8",
        "algo.reward_threshold=-1", "optim.lr=1e-3", "train.eval_every=0", "train.diag_every=0",
        "train.progress=false", "train.tensorboard=false",
    ]
