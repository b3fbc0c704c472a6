"""Numerical faults: a NaN/Inf loss or gradient skips that update (logged with its step), K consecutive
bad steps stop the run with a clear message and the last good checkpoint intact, and steps with no, all
or a single positive rollout are safe for every algorithm preset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import popo.trainer
from popo.algorithms import PRESETS
from popo.checkpoint import latest_checkpoint, verify_checkpoint
from popo.config import load_config
from popo.build import build_trainer
from popo.trainer import Trainer


class InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


FAULTS = {
    "nan-loss": lambda loss: loss * float("nan"),
    "inf-loss": lambda loss: loss + float("inf"),
    "inf-grad": InfGrad.apply,
}


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def make_trainer(overrides, out_dir, *extra, log=None) -> Trainer:
    config = load_config(None, [*overrides, "train.steps=4", "train.save_every=0", f"train.out_dir={out_dir}",
                                *extra])
    return build_trainer(config, log=log or (lambda message: None))


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    models = {"policy": trainer.models.policy, "target": trainer.models.target}
    return {name: params(model) for name, model in models.items() if model is not None}


def inject(trainer: Trainer, fault: str, bad_steps: set[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Make the loss of the given (1-based) steps non-finite; returns the parameters after each step."""
    current = {"step": 0}
    after = {0: snapshot(trainer)}
    loss_fn = trainer.algorithm.loss

    def faulty_loss(inputs, cfg):
        loss, metrics = loss_fn(inputs, cfg)
        return (FAULTS[fault](loss) if current["step"] in bad_steps else loss), metrics

    trainer.algorithm = dataclasses.replace(trainer.algorithm, loss=faulty_loss)
    train_step = trainer.train_step

    def tracked_step(step):
        current["step"] = step + 1
        record = train_step(step)
        after[step + 1] = snapshot(trainer)
        return record

    trainer.train_step = tracked_step
    return after


@pytest.mark.parametrize("fault", list(FAULTS))
def test_non_finite_update_is_skipped_and_logged_with_its_step(tiny_testbed, one_thread, tmp_path, fault):
    logged: list[str] = []
    trainer = make_trainer(tiny_testbed, tmp_path / "run", "algo.tau=0.5", log=logged.append)
    after = inject(trainer, fault, {2})
    history = trainer.run()
    assert [r["skipped"] for r in history] == [0.0, 1.0, 0.0, 0.0]
    assert torch.equal(after[2]["policy"], after[1]["policy"]), "a skipped update leaves the policy untouched"
    assert torch.equal(after[2]["target"], after[1]["target"]), "...and the EMA target"
    assert "tau" not in history[1] and "tau" in history[2]
    assert not torch.equal(after[3]["policy"], after[2]["policy"]), "training goes on after a skipped step"
    assert "step 2: non-finite loss or gradient, update skipped (1 in a row)" in logged
    assert trainer.bad_steps == 0  # reset by the good steps after it
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["step"] == 2 and lines[1]["skipped"] == 1.0
    assert all(torch.isfinite(p).all() for p in trainer.models.policy.parameters())
    # AdamW took 3 steps, not 4: the skipped update left no trace in the optimizer state either
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {3}


def test_consecutive_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(tiny_testbed, one_thread, tmp_path):
    out = tmp_path / "run"
    trainer = make_trainer(tiny_testbed, out, "train.steps=6", "train.save_every=1", "train.max_bad_steps=2",
                           "train.keep_last=2")
    after = inject(trainer, "nan-loss", {3, 4, 5, 6})
    with pytest.raises(RuntimeError, match=r"stopping: 2 consecutive steps with a non-finite loss or gradient "
                                           rf"\(last good checkpoint kept in {out}\)"):
        trainer.run()
    # step 3 was skipped (1 bad step): its checkpoint holds the step-2 weights; step 4 stopped the run
    last = latest_checkpoint(out)
    assert last is not None and last.name == "step-000003" and verify_checkpoint(last) is None
    assert json.loads((last / "state.json").read_text())["bad_steps"] == 1
    from safetensors.torch import load_file

    saved = load_file(last / "policy" / "model.safetensors")
    policy = trainer.models.policy
    for name, value in saved.items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, dict(policy.named_parameters())[name].detach())
    assert torch.equal(after[4]["policy"], after[2]["policy"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the failing step is logged before the stop


# rewards of one step: 4 prompts x 2 rollouts
PATTERNS = {
    "no positive": [0, 0, 0, 0, 0, 0, 0, 0],
    "all positive": [1, 1, 1, 1, 1, 1, 1, 1],
    "single positive": [0, 0, 0, 1, 0, 0, 0, 0],
    "one positive per prompt": [1, 0, 0, 1, 1, 0, 0, 1],
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_no_all_and_single_positive_steps_are_safe(tiny_testbed, one_thread, tmp_path, monkeypatch, preset):
    pattern = {"rewards": None}

    def fixed_rewards(verifier, texts, answers, truncated, *, zero_if_truncated, **rows):
        return torch.tensor(pattern["rewards"], dtype=torch.float32)

    monkeypatch.setattr(popo.trainer, "score_rollouts", fixed_rewards)
    trainer = make_trainer(tiny_testbed, tmp_path / "run", f"algo.name={preset}", "algo.reward_threshold=0.0",
                           "train.diag_every=1")
    popo_like = PRESETS[preset][0] == "popo"
    for step, (name, rewards) in enumerate(PATTERNS.items()):
        pattern["rewards"] = rewards
        before = params(trainer.models.policy)
        record = trainer.train_step(step)
        numbers = {k: v for k, v in record.items() if isinstance(v, float)}
        bad = {k: v for k, v in numbers.items() if not torch.isfinite(torch.tensor(v))}
        assert not bad, f"{preset}, {name}: non-finite metrics {bad}"
        assert record["skipped"] == 0.0 or record.get("skipped_no_positive") == 1.0, (preset, name, record)
        assert record["positive_rollouts"] == sum(rewards)
        assert all(torch.isfinite(p).all() for p in trainer.models.policy.parameters())
        if popo_like and name == "no positive":  # nothing to learn from: no update at all
            assert record["trained_rollouts"] == 0 and torch.equal(before, params(trainer.models.policy))
        if popo_like and name != "no positive":
            assert record["trained_rollouts"] == sum(rewards)
    assert trainer.bad_steps == 0
    trainer.verifier.close()
