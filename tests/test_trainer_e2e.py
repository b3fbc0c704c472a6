"""End-to-end runs of a few steps on the testbed (seconds): the trainer's contract."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import warm_testbed_config
from popo.checkpoint import latest_checkpoint
from popo.cli import main
from popo.logprobs import completion_outputs
from popo.build import build_trainer

REQUIRED_KEYS = {"step", "reward_mean", "pass_rate", "rollouts", "positive_rollouts", "trained_rollouts"}


@pytest.fixture(scope="module")
def cache_dir(warm_testbed_cache):
    return warm_testbed_cache


def make_config(cache_dir, out_dir, *extra):
    # 1-digit problems: 200 short warm-up steps give a model that solves some problems, so steps have positives
    return warm_testbed_config(cache_dir, out_dir, *extra)


def params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_popo_trains_only_positives_and_moves_ema(cache_dir, tmp_path):
    trainer = build_trainer(make_config(cache_dir, tmp_path / "popo", "algo.tau=0.5", "optim.lr=1e-3"))
    start = params(trainer.models.policy)
    history = trainer.run()
    records = [json.loads(line) for line in (tmp_path / "popo" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert REQUIRED_KEYS <= record.keys()
        assert record["trained_rollouts"] == record["positive_rollouts"]
        assert record["rollouts"] == 32
    assert sum(r["positive_rollouts"] for r in history) > 0, "the warmed-up model should solve something"
    assert not torch.equal(start, params(trainer.models.policy))


def test_ema_moves_target_by_expected_factor(cache_dir, tmp_path):
    trainer = build_trainer(make_config(cache_dir, tmp_path / "ema", "algo.tau=0.25", "optim.lr=1e-3",
                                  "train.steps=1"))
    target_before = params(trainer.models.target)
    record = {}
    for _ in range(10):  # find a step with a positive (an update happens)
        before = params(trainer.models.target)
        record = trainer.train_step(trainer.step)
        trainer.step += 1
        if record["positive_rollouts"]:
            break
    assert record["positive_rollouts"] > 0
    online = params(trainer.models.policy)
    # target <- 0.25 * target + 0.75 * online
    assert torch.allclose(params(trainer.models.target), 0.25 * before + 0.75 * online, atol=1e-6)
    del target_before


def test_no_positive_step_leaves_parameters_unchanged(cache_dir, tmp_path):
    trainer = build_trainer(make_config(cache_dir, tmp_path / "none", "algo.reward_threshold=2.0"))
    start, target = params(trainer.models.policy), params(trainer.models.target)
    record = trainer.train_step(0)
    assert record["positive_rollouts"] == 0 and record["trained_rollouts"] == 0
    assert record["skipped_no_positive"] == 1.0
    assert torch.equal(start, params(trainer.models.policy))
    assert torch.equal(target, params(trainer.models.target))


@pytest.mark.parametrize("kl", ["0.0", "0.1"])
def test_grpo_with_and_without_reference(cache_dir, tmp_path, kl):
    trainer = build_trainer(make_config(cache_dir, tmp_path / "grpo", "algo.name=grpo", f"algo.kl_coef={kl}"))
    assert (trainer.models.reference is not None) == (kl != "0.0")
    assert trainer.models.target is None
    history = trainer.run()
    for record in history:
        assert record["trained_rollouts"] == record["rollouts"]
        assert all(v == v for v in record.values() if isinstance(v, float))  # no NaN


def test_checkpoint_round_trip_and_resume(cache_dir, tmp_path):
    out = tmp_path / "resume"
    config = make_config(cache_dir, out, "train.save_every=2", "train.steps=2")
    trainer = build_trainer(config)
    trainer.run()
    path = latest_checkpoint(out)
    assert path is not None and path.name == "step-000002"
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path / "policy")
    ids = torch.tensor([[5, 6, 13, 7, 16, 8, 9, 1]])
    mask = torch.ones_like(ids)
    a = completion_outputs(trainer.models.policy, ids, mask, 5).logprobs
    b = completion_outputs(loaded, ids, mask, 5).logprobs
    assert torch.equal(a, b)
    # resume continues the step count and the metrics stream
    assert main(["train", "--resume", str(out), "train.steps=4"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert latest_checkpoint(out).name == "step-000004"


def test_clear_one_line_errors(cache_dir, tmp_path, capsys):
    assert main(["train", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" in capsys.readouterr().err
    assert main(["train", f"model.name={tmp_path / 'missing'}", f"train.out_dir={tmp_path / 'm'}"]) == 2
    assert "model path not found" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train", f"data.source={empty}", f"train.out_dir={tmp_path / 'x'}",
                 f"testbed.cache_dir={cache_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "empty.jsonl" in err and "Traceback" not in err
