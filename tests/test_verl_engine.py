"""POPO's verl actor engine (popo.integrations.verl.engine) on CPU, against popo's own update: the same loss and
gradients, positives alone forwarded, two processes equal to one, exact checkpoint resumption, and
registration. verl runs through the CPU platform of tests/verl_cpu.py (FSDP2 over gloo)."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("verl", reason="verl is not installed here: the verl engine tests run in verl's environment")

import torch  # noqa: E402

import verl_cpu  # noqa: E402

SETTINGS = {"alpha": 0.1, "beta": 0.01, "noise_std": 0.02, "tau": 0.9}

# Six rows of varied lengths; row 1 is a negative (weight 0).
PROMPTS = [[5, 6, 7], [8, 9], [5, 6, 7], [10, 11, 12, 13], [3, 4], [30, 31, 32]]
COMPLETIONS = [[20, 21, 22], [23], [24, 25], [26, 27, 28, 29], [40, 41, 42, 43, 44], [45, 46]]
WEIGHTS = [0.6, 0.0, 0.4, 1.0, 0.3, 0.7]

# Two steps of eight rows for two ranks (rows 0-3 and 4-7); in step 2 the second rank has no positive.
STEPS = [
    ([[5, 6], [7, 8, 9], [10], [11, 12], [13, 14, 15], [16], [17, 18], [19, 20, 21]],
     [[22, 23], [24], [25, 26, 27], [28], [29, 30], [31, 32, 33, 34], [35], [36, 37]],
     [0.5, 0.0, 0.5, 0.0, 1.0, 0.25, 0.75, 0.0]),
    ([[38, 39], [40], [41, 42, 43], [44, 45], [46], [47, 48], [49, 50, 3], [4]],
     [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15, 16], [17], [18, 19, 20], [21, 22]],
     [0.2, 0.3, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """verl on the CPU in this process (a one-process gloo group) and the tiny model's folder."""
    import torch.distributed as dist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    undo = verl_cpu.use_cpu()
    created = not dist.is_initialized()
    verl_cpu.join_group(0, 1, verl_cpu.free_port())
    verl_cpu.register_cpu_engines()
    yield verl_cpu.write_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))
    if created:
        dist.destroy_process_group()
    undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(model_dir):
    """An engine whose weights stay at the initial ones (tests here only run forward/backward passes)."""
    return verl_cpu.build_engine(model_dir, popo=SETTINGS)


def _popo_models(model_dir, engine):
    """popo's own models with the engine's initial weights: policy, EMA target (= policy) and predictor."""
    from transformers import AutoModelForCausalLM

    from popo.ema import freeze_
    from popo.models import Models

    policy = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    return Models(policy=policy.train(), target=freeze_(copy.deepcopy(policy)),
                  predictor=copy.deepcopy(engine.predictor).requires_grad_(True))


def _grads(module) -> dict[str, torch.Tensor]:
    return {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for name, p in module.named_parameters()}


@pytest.mark.parametrize("split", [dict(micro_rows=64), dict(micro_rows=2), dict(max_tokens=12),
                                   dict(micro_rows=2, remove_padding=False, temperature=0.7)],
                         ids=["one-micro-batch", "rows-of-two", "token-budget", "padded-forward"])
def test_verl_engine_loss_and_gradients_equal_popo_update(model_dir, engine, split):
    from popo.algorithms import get_algorithm
    from popo.seeds import content_noise_seeds
    from popo.update import update_policy

    data = verl_cpu.verl_batch(PROMPTS, COMPLETIONS, WEIGHTS, **split)
    engine.optimizer_zero_grad()
    out = engine.forward_backward_batch(data, None)
    assert len(out["loss"]) == (1 if split.get("micro_rows") == 64 else 3)

    models = _popo_models(model_dir, engine)
    batch = verl_cpu.popo_rollouts(PROMPTS, COMPLETIONS)
    credit = torch.tensor(WEIGHTS)
    keep = credit > 0  # popo's trainer hands its update the positives alone
    ids = data["input_ids"]
    seeds = content_noise_seeds(ids.values(), ids.offsets(), engine.engine_config.seed, engine.trainer_step())
    frozen = torch.optim.SGD(models.trainable_parameters(), lr=0.0)  # the update's gradients stay readable
    metrics = update_policy(models, frozen, get_algorithm(engine.algo.name), engine.algo, batch.select(keep), credit[keep],
                            keep[keep], max_length=batch.completion_ids.shape[1],
                            token_budget=10**6 if split.get("micro_rows") == 64 else 12, grad_clip=0.0,
                            row_seeds=seeds[keep])

    assert abs(sum(out["loss"]) - metrics["loss"]) <= 1e-6
    for mine, theirs in ((_grads(engine.module), _grads(models.policy)),
                         (_grads(engine.predictor), _grads(models.predictor))):
        assert mine.keys() == theirs.keys()
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-6, msg=name)
    assert any(float(g.abs().max()) > 1e-3 for g in _grads(engine.predictor).values())  # the similarity term trains


def test_verl_engine_forwards_only_positives_with_gradient(engine):
    """A hook on each decoder counts the sequences (position 0s) it sees: the policy's, with gradient, are the
    positives and nothing else; the target's run without gradient. An all-negative batch forwards nothing
    and its optimizer step changes nothing."""
    calls: dict[str, list] = {"policy": [], "target": []}

    def counter(name):
        def hook(_module, _args, kwargs):
            positions = kwargs["position_ids"]
            calls[name].append((torch.is_grad_enabled(), int((positions == 0).sum()), positions.numel()))
        return hook

    handles = [engine.module.get_decoder().register_forward_pre_hook(counter("policy"), with_kwargs=True),
               engine.target.get_decoder().register_forward_pre_hook(counter("target"), with_kwargs=True)]
    try:
        engine.optimizer_zero_grad()
        engine.forward_backward_batch(verl_cpu.verl_batch(PROMPTS, COMPLETIONS, WEIGHTS, micro_rows=2), None)
        positives = [row for row, w in enumerate(WEIGHTS) if w > 0]
        tokens = sum(len(PROMPTS[r]) + len(COMPLETIONS[r]) for r in positives)
        for name, grad in (("policy", True), ("target", False)):
            assert all(enabled == grad for enabled, _, _ in calls[name]), calls[name]
            assert sum(seqs for _, seqs, _ in calls[name]) == len(positives) < len(WEIGHTS)
            assert sum(n for _, _, n in calls[name]) == tokens

        calls["policy"].clear()
        before = verl_cpu.full_state(engine.module)
        engine.optimizer_zero_grad()
        engine.forward_backward_batch(verl_cpu.verl_batch(PROMPTS, COMPLETIONS, [0.0] * len(PROMPTS)), None)
        assert calls["policy"] == [] and engine.optimizer_step() == 0.0
        after = verl_cpu.full_state(engine.module)
        assert all(torch.equal(before[k], after[k]) for k in before)
    finally:
        for handle in handles:
            handle.remove()


def _train(engine, steps, rank: int, world: int, **split) -> list[float]:
    """verl's `train_batch` on this rank's share of each step's rows, then the trainer's scheduler step;
    returns each step's idle passes over all ranks (the engine's metric)."""
    idle = []
    for prompts, completions, weights in steps:
        share = slice(rank * len(prompts) // world, (rank + 1) * len(prompts) // world)
        out = engine.train_batch(verl_cpu.verl_batch(prompts[share], completions[share], weights[share], **split),
                                 None)
        idle.append(float(out["metrics"]["popo/idle_passes"].aggregate()) / world)  # the world x share convention
        engine.lr_scheduler_step()
    return idle


def _states(engine) -> dict[str, torch.Tensor]:
    """Full copies of the policy, the target and the predictor (a collective when sharded)."""
    out = {f"policy.{k}": v for k, v in verl_cpu.full_state(engine.module).items()}
    out.update({f"target.{k}": v for k, v in verl_cpu.full_state(engine.target).items()})
    out.update({f"predictor.{k}": v.detach().clone() for k, v in engine.predictor.state_dict().items()})
    return out


def _two_step_run(rank: int, world: int, model_dir: str, out: str) -> None:
    # SGD for the policy: its step is linear in the gradient. Adam divides by sqrt(v) + eps, so a gradient that
    # is zero in exact arithmetic (a key bias: softmax ignores a shift shared by all keys) keeps rounding
    # noise of ~1e-12 that Adam turns into steps of ~lr * 1e-4, whatever the process count.
    engine = verl_cpu.build_engine(model_dir, popo=SETTINGS, optimizer="SGD")
    idle = _train(engine, STEPS, rank, world, micro_rows=1 if world > 1 else 3)
    if world > 1:  # step 1: two positives here, three there; step 2: the second rank has none
        assert idle == ([1.0, 0.0] if rank == 0 else [0.0, 3.0]), idle
    states = _states(engine)
    if rank == 0:
        torch.save(states, out)


@pytest.mark.slow
def test_verl_engine_two_processes_equal_one_process(model_dir, tmp_path):
    """Two gloo processes with half the rows each (in step 2 the second has no positive and runs idle
    passes) end with the weights, target and predictor of one process with the whole batch."""
    _two_step_run(0, 1, model_dir, str(tmp_path / "one.pt"))
    verl_cpu.launch(_two_step_run, 2, model_dir, str(tmp_path / "two.pt"), timeout=300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-6, msg=name)
    initial = verl_cpu.full_state(verl_cpu.build_engine(model_dir, popo=SETTINGS, optimizer="SGD").module)
    assert any(not torch.equal(one[f"policy.{k}"], v) for k, v in initial.items())  # the steps moved the policy


def test_verl_engine_checkpoint_round_trip_continues_exactly(model_dir, tmp_path):
    first = verl_cpu.build_engine(model_dir, popo=SETTINGS)
    initial = verl_cpu.full_state(first.module)
    _train(first, STEPS[:1], 0, 1, micro_rows=2)
    policy, target = verl_cpu.full_state(first.module), verl_cpu.full_state(first.target)
    for name, start in initial.items():  # one EMA step from the initial copy: target = lerp(start, policy, 1 - tau)
        torch.testing.assert_close(target[name], start.lerp(policy[name], 1 - SETTINGS["tau"]), rtol=0, atol=1e-7)
    first.save_checkpoint(str(tmp_path / "ckpt"), global_step=1)
    assert (tmp_path / "ckpt" / "popo" / "world_size_1_rank_0" / "target.safetensors").exists()  # popo.companions
    assert (tmp_path / "ckpt" / "model_world_size_1_rank_0.pt").exists()  # verl's own files, same folder
    _train(first, STEPS[1:], 0, 1, micro_rows=2)

    resumed = verl_cpu.build_engine(model_dir, popo=SETTINGS)
    resumed.load_checkpoint(str(tmp_path / "ckpt"))
    assert resumed.trainer_step() == 1
    _train(resumed, STEPS[1:], 0, 1, micro_rows=2)
    a, b = _states(first), _states(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert any(not torch.equal(a[f"policy.{k}"], a[f"target.{k}"]) for k in verl_cpu.full_state(first.module))


def test_verl_engine_registration_and_settings(model_dir):
    import functools

    from verl.workers.config import FSDPActorConfig
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.utils.losses import ppo_loss

    from popo.integrations.verl.engine import POPOEngineConfig, POPOFSDPEngine, check_actor_settings, register_engine
    from popo.integrations.verl.settings import LOSS_NAME, POPOVerlConfig

    assert register_engine() is POPOFSDPEngine and register_engine() is POPOFSDPEngine  # idempotent
    assert EngineRegistry.get_engine_cls("language_model", "fsdp2") is POPOFSDPEngine
    with pytest.raises(ValueError, match="unknown key"):
        POPOEngineConfig(strategy="fsdp2", popo={"alhpa": 0.1})
    plain = POPOFSDPEngine(*verl_cpu.engine_settings(model_dir))  # verl's own config: verl's engine unchanged
    assert not plain.popo_active

    algo = POPOVerlConfig(**SETTINGS).algo()

    def actor(**kw):
        base = dict(rollout_n=2, ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, entropy_coeff=algo.beta,
                    policy_loss={"loss_mode": LOSS_NAME})
        return functools.partial(ppo_loss, config=FSDPActorConfig(**{**base, **kw}))  # as verl's actor worker binds it

    check_actor_settings(actor(), algo)
    check_actor_settings(None, algo)
    for wrong, match in ((dict(policy_loss={"loss_mode": "vanilla"}), "loss_mode"),
                         (dict(entropy_coeff=0.0), "entropy_coeff"), (dict(ppo_epochs=2), "ppo_epochs")):
        with pytest.raises(ValueError, match=match):
            check_actor_settings(actor(**wrong), algo)
