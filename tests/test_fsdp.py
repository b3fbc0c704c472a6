"""FSDP2 through `accelerate launch` (gloo on CPU): two sharded processes train exactly like one process
with the whole batch, a rank without positives does not hang, and checkpoints move between sharded and
unsharded runs in both directions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from popo.fsdp import ShardingPlan, plan_from_environment
from test_distributed import GRADIENT_DIAGNOSTICS, assert_same_records, assert_same_weights, overrides, records, run, weights

FSDP = ("--use_fsdp", "--fsdp_version=2", "--fsdp_auto_wrap_policy=TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap=Qwen2DecoderLayer")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.fixture(scope="module")
def cache(warm_testbed_cache) -> Path:
    return Path(warm_testbed_cache)


@pytest.mark.slow
def test_sharded_popo_equals_one_process_and_checkpoints_move_both_ways(cache, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["algo.name=popo", "train.steps=3", "train.save_every=1", "data.eval_source=testbed",
            "data.eval_size=8", "train.eval_every=3",  # rank 0 evaluates on gathered weights at the end
            "optim.foreach=true"]  # CUDA's default multi-tensor Adam: DTensor policy and plain-tensor predictor
    run(["train", *overrides(cache, one, *args)])
    run(["train", *overrides(cache, two, *args)], processes=2, launch=(*FSDP, "--fsdp_reshard_after_forward=true"))
    a, b = records(one), records(two)
    assert_same_records(a, b, sharded=True)
    assert not any(k.startswith(GRADIENT_DIAGNOSTICS) for r in b for k in r)  # skipped under FSDP, as documented
    # a step where one rank had no positive: it ran idle passes while the other trained
    assert any(r.get("positive_rollouts_min_rank") == 0 < r["positive_rollouts"] and r["idle_passes"] > 0
               for r in b), b
    assert sum(r.get("trained_rollouts", 0) for r in a) > 0 and "eval/greedy_acc" in a[-1], a[-1]
    for step in (1, 3):
        assert_same_weights(weights(one, step), weights(two, step))  # full (gathered) tensors, tied once
        assert_same_weights(weights(one, step, "target"), weights(two, step, "target"))  # EMA on shards

    # the sharded run's step-1 checkpoint resumes in one process, and the one-process one in two sharded
    for source, resumed, processes in ((two, tmp_path / "from-two", 1), (one, tmp_path / "from-one", 2)):
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(source / "checkpoints" / "step-000001", resumed / "checkpoints" / "step-000001")
        shutil.copy(source / "config.yaml", resumed / "config.yaml")
        lines = (source / "metrics.jsonl").read_text().splitlines()
        (resumed / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # the step-0 eval and step 1
        config = (resumed / "config.yaml").read_text().replace(str(source), str(resumed))
        (resumed / "config.yaml").write_text(config)
        if processes == 1:
            run(["train", "--resume", str(resumed)])
        else:  # the CLI shortcut launches the sharded processes itself
            run(["train", "--resume", str(resumed), "--num-processes", "2", "--fsdp"])
        assert_same_records(a, records(resumed), sharded=True)
        assert_same_weights(weights(one, 3), weights(resumed, 3))
        assert_same_weights(weights(one, 3, "target"), weights(resumed, 3, "target"))


@pytest.mark.slow
def test_sharded_grpo_with_reference_old_logprobs_and_offload(cache, tmp_path):
    """ZeRO-2 style (weights kept gathered from forward to backward), the reference and the old
    log-probs in lockstep, the reference's shards offloaded to CPU memory."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["algo.name=grpo-kl", "algo.updates_per_batch=2", "rollout.prompts_per_step=4", "optim.lr=5e-5",
            "train.steps=3", "model.offload_companions=true", "optim.micro_batch_tokens=64"]  # several per rank
    run(["train", *overrides(cache, one, *args)])
    run(["train", *overrides(cache, two, *args)], processes=2, launch=(*FSDP, "--fsdp_reshard_after_forward=false"))
    a, b = records(one), records(two)
    assert_same_records(a, b, sharded=True)
    assert not any(k.startswith(GRADIENT_DIAGNOSTICS) for r in b for k in r)  # skipped under FSDP, as documented
    assert sum(r.get("trained_rollouts", 0) for r in a) > 0
    assert_same_weights(weights(one, 3), weights(two, 3))
    assert max(r.get("micro_batches", 0) for r in b) >= 4  # ranks ran several micro-batches, in lockstep
    assert any(r.get("idle_passes", 0) > 0 for r in b), b  # with unequal counts


def _launch_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "popo", "train"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name, reshard", [("fsdp-1node-8gpu.yaml", True), ("fsdp-zero2-1node-8gpu.yaml", False),
                                           ("fsdp-2nodes-8gpu.yaml", True)])
def test_shipped_fsdp_configs_give_the_documented_plan(name, reshard):
    plan = plan_from_environment(_launch_env(CONFIGS / name))
    assert plan == ShardingPlan(reshard_after_forward=reshard, param_dtype=torch.bfloat16, offload_params=False,
                                layer_classes=("Qwen2DecoderLayer",))


def test_ddp_configs_do_not_shard():
    assert plan_from_environment(_launch_env(CONFIGS / "ddp-1node-8gpu.yaml")) is None
    assert plan_from_environment({}) is None


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed launches are not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version 1 is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"},
     "SIZE_BASED_WRAP is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
     "model.gradient_checkpointing"),
])
def test_unsupported_launches_are_refused_with_the_fix(env, message):
    with pytest.raises(ValueError, match=message):
        plan_from_environment(env)


def test_cli_shortcut_builds_the_sharded_launch():
    from popo.cli import launch_command

    cmd = launch_command(["train", "cfg.yaml", "--num-processes", "4", "--fsdp", "algo.name=grpo"], 4, fsdp=True)
    assert cmd[cmd.index("-m", 3):] == ["-m", "popo", "train", "cfg.yaml", "algo.name=grpo"]
    assert {"--use_fsdp", "--fsdp_version=2", "--num_processes=4"} <= set(cmd) and "--multi_gpu" not in cmd
    plain = launch_command(["train", "--num-processes=2"], 2)
    assert "--multi_gpu" in plain and "--use_fsdp" not in plain and plain[-2:] == ["popo", "train"]


@pytest.mark.parametrize("max_norm", [0.05, 1e9, float("inf")])
def test_clipping_over_replicated_gradients_matches_torch(max_norm):
    from popo.fsdp import clip_gradients_

    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = a.grad.clone()
    calls = []
    norm = clip_gradients_(ours, max_norm, lambda t: calls.append(float(t)) or t)  # no shard: adds 0
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert calls == [0.0]
    assert float(norm) == pytest.approx(float(expected), abs=1e-6)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=0)
