"""examples/popo_minimal.py, the reference loop, takes the same step as popo's own trainer.

One step of each from the same warm-started model, seed, configuration and batch: the example's loss and its
updated policy, predictor and EMA target must equal the trainer's bit for bit. The arithmetic is the same
(the same seeds for sampling and target noise, one micro-batch on either side, the same forward passes, loss,
clipping and AdamW step, on one thread in one process), so no tolerance is needed; a difference means the two
loops no longer compute the same thing. Three steps are compared the same way (later steps' seeds and prompts,
AdamW's state), and the comparison is shown to be able to fail: changing one setting of the example only
(alpha, noise, learning rate, tau) changes what it should.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from conftest import warm_testbed_config
from popo.build import build_trainer
from popo.rollout.base import Rollouts, plan_micro_batches

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "popo_minimal.py"
# 4 prompts x 4 rollouts of the 1-digit addition testbed; a large rate and a fast EMA make the step's changes
# large, so that each is far from rounding noise
SETTINGS = ["rollout.prompts_per_step=4", "rollout.group_size=4", "train.steps=1", "train.diag_every=0",
            "model.device=cpu", "optim.lr=1e-3", "algo.tau=0.5"]


def load_example():
    spec = importlib.util.spec_from_file_location("popo_minimal", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def close(trainer) -> None:
    """What `Trainer.run` closes at its end (these tests call `train_step` only)."""
    trainer.verifier.close()
    trainer.writer.close()
    trainer.lock.release()


@pytest.fixture(scope="module")
def reference(warm_testbed_cache, tmp_path_factory):
    """One step of `popo.trainer.Trainer`: its config, record, parameters before and after the step, and the
    size of its micro-batch plan (one micro-batch, as the example forwards all positives at once)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the example runs on the same thread count: the same float reductions
    try:
        config = warm_testbed_config(warm_testbed_cache, tmp_path_factory.mktemp("trainer"), *SETTINGS)
        trainer = build_trainer(config, log=lambda message: None)
        models = trainer.models
        before = {"policy": flat(models.policy), "target": flat(models.target), "predictor": flat(models.predictor)}
        record = trainer.train_step(0)
        after = {"policy": flat(models.policy), "target": flat(models.target), "predictor": flat(models.predictor)}
        close(trainer)
        yield {"config": config, "record": record, "before": before, "after": after}
    finally:
        torch.set_num_threads(threads)


def example_step(reference, *changes: str) -> dict:
    """One step of the example with the reference's config, `changes` (overrides) on top."""
    config = reference["config"]
    if changes:
        config = warm_testbed_config(config.testbed.cache_dir, config.train.out_dir, *SETTINGS, *changes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = load_example().train(config, log=lambda message: None)
    finally:
        torch.set_num_threads(threads)
    return {"loss": out["history"][0]["loss"], "record": out["history"][0],
            **{name: flat(out[name]) for name in ("policy", "target", "predictor")}}


def test_one_step_equals_the_trainers_step(reference):
    record, before, after = reference["record"], reference["before"], reference["after"]
    # the batch holds positives and negatives, so the example's selection of positives is exercised
    assert 0 < record["positive_rollouts"] < record["rollouts"] == 16
    assert record["micro_batches"] == 1 and record["skipped"] == 0.0
    for name in before:  # the step moved every part: equality below is not equality of untouched weights
        assert not torch.equal(before[name], after[name]), name

    ours = example_step(reference)
    assert ours["record"]["positives"] == record["positive_rollouts"]
    assert ours["loss"] == record["loss"]
    assert ours["record"]["nll"] == record["nll"] and ours["record"]["cos_sim"] == record["cos_sim"]
    assert ours["record"]["grad_norm"] == record["grad_norm"]
    for name in ("policy", "predictor", "target"):
        assert torch.equal(ours[name], after[name]), f"{name}: max |diff| {(ours[name] - after[name]).abs().max()}"


def test_three_steps_equal_the_trainers(warm_testbed_cache, tmp_path, one_thread):
    """Later steps too: the prompt order, the seeds of steps > 0 and AdamW's state carried between steps."""
    config = warm_testbed_config(warm_testbed_cache, tmp_path, *SETTINGS, "train.steps=3")
    trainer = build_trainer(config, log=lambda message: None)
    records = [trainer.train_step(step) for step in range(3)]
    close(trainer)
    ours = load_example().train(config, log=lambda message: None)
    assert all(r["positive_rollouts"] > 0 for r in records)  # every step updates
    assert [h["loss"] for h in ours["history"]] == [r["loss"] for r in records]
    for name in ("policy", "predictor", "target"):
        assert torch.equal(flat(ours[name]), flat(getattr(trainer.models, name))), name


@pytest.mark.parametrize("change, differs, same", [
    ("algo.alpha=0.3", ("loss", "policy", "predictor", "target"), ()),
    ("algo.noise_std=0.05", ("loss", "policy", "predictor", "target"), ()),  # the per-row target noise is used
    ("optim.lr=2e-3", ("policy", "predictor", "target"), ("loss",)),  # the loss is taken before the update
    ("algo.tau=0.6", ("target",), ("loss", "policy", "predictor")),
])
def test_the_comparison_sees_a_changed_setting(reference, change, differs, same):
    ours, after = example_step(reference, change), reference["after"] | {"loss": reference["record"]["loss"]}
    for name in differs:
        assert not (ours[name] == after[name] if name == "loss" else torch.equal(ours[name], after[name])), name
    for name in same:
        assert ours[name] == after[name] if name == "loss" else torch.equal(ours[name], after[name]), name


def test_the_example_refuses_what_it_does_not_implement(reference):
    config = warm_testbed_config(reference["config"].testbed.cache_dir, reference["config"].train.out_dir,
                                 *SETTINGS, "algo.name=grpo")
    with pytest.raises(AssertionError):
        load_example().train(config, log=lambda message: None)


def test_popo_keeps_the_examples_default_batch_in_one_micro_batch():
    """The example forwards all positives at once; so does popo while they fit `optim.micro_batch_tokens`."""
    n, p, c = 128, 12, 32  # the example's largest batch: 16 prompts x 8 rollouts, countdown prompts, 32 tokens
    batch = Rollouts(torch.zeros(n, p, dtype=torch.long), torch.ones(n, p, dtype=torch.bool),
                     torch.zeros(n, c, dtype=torch.long), torch.ones(n, c, dtype=torch.bool), torch.zeros(n, c),
                     torch.zeros(n, dtype=torch.bool), [""] * n, 8)
    assert len(plan_micro_batches(batch, 8192)) == 1
