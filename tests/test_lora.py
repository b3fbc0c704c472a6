"""LoRA through peft: only adapters train, the EMA target tracks the adapters alone, checkpoints hold the
adapter, and evaluation merges it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs the peft package (pip install 'popo[lora]')")

from conftest import warm_testbed_config  # noqa: E402
from popo.checkpoint import latest_checkpoint  # noqa: E402
from popo.config import ConfigError, load_config  # noqa: E402
from popo.loading import load_policy  # noqa: E402
from popo.logprobs import completion_outputs  # noqa: E402
from popo.lora import AdapterEMA, AdapterOff, companion, plain_weights  # noqa: E402
from popo.build import build_trainer  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(warm_testbed_cache):
    return warm_testbed_cache


def make_config(cache_dir, out_dir, *extra):
    return warm_testbed_config(cache_dir, out_dir, "data.eval_source=", "train.diag_every=0", "model.device=cpu",
                               "model.lora.r=4", "model.lora.alpha=8", "optim.lr=1e-2", *extra)


def split_params(model):
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return base, adapter


def test_nested_lora_keys_are_checked():
    assert load_config(None, ["model.lora.r=8"]).model.lora.r == 8
    with pytest.raises(ConfigError, match="did you mean 'model.lora.r'"):
        load_config(None, ["model.lora.rr=8"])
    with pytest.raises(ConfigError, match="server syncs LoRA adapters only"):
        load_config(None, ["rollout.engine=vllm", "rollout.vllm_mode=server"])


def test_only_adapters_train_and_the_target_tracks_them(cache_dir, tmp_path):
    trainer = build_trainer(make_config(cache_dir, tmp_path / "run", "algo.tau=0.5"), log=lambda s: None)
    policy, target = trainer.models.policy, trainer.models.target
    assert isinstance(target, AdapterEMA)
    assert {id(p) for p in trainer.models.trainable_parameters()} == {id(p) for n, p in policy.named_parameters() if "lora_" in n} | {
        id(p) for p in trainer.models.predictor.parameters()}
    full = sum(p.numel() * p.element_size() for p in policy.parameters())
    assert target.num_bytes() < 0.2 * full  # the target holds the adapters only
    base0, adapter0 = split_params(policy)
    updated = False
    for _ in range(6):
        shadow = [t.clone() for t in target.shadow]
        record = trainer.train_step(trainer.step)
        trainer.step += 1
        if record["skipped"] == 0.0:
            updated = True
            online = target.online()
            for before, after, now in zip(shadow, target.shadow, online):  # tau = 0.5
                torch.testing.assert_close(after, 0.5 * before + 0.5 * now.detach(), atol=1e-6, rtol=0)
    assert updated, "no step had a positive"
    base1, adapter1 = split_params(policy)
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    assert any(not torch.equal(adapter0[n], adapter1[n]) for n in adapter0)


def test_swapped_target_runs_the_ema_adapters_and_restores_the_policy(cache_dir, tmp_path):
    trainer = build_trainer(make_config(cache_dir, tmp_path / "swap"), log=lambda s: None)
    policy, target = trainer.models.policy, trainer.models.target
    for t in target.shadow:
        t.add_(0.05)  # make the target differ from the policy
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    attention = torch.ones_like(ids)
    before = completion_outputs(policy, ids, attention, 2).logprobs
    with torch.no_grad(), companion(target) as model:
        swapped = completion_outputs(model, ids, attention, 2).logprobs
    after = completion_outputs(policy, ids, attention, 2).logprobs
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    assert not torch.allclose(before, swapped)
    with companion(AdapterOff(policy)) as base, torch.no_grad():  # the reference: adapters off
        with policy.disable_adapter():
            expected = completion_outputs(policy, ids, attention, 2).logprobs
        torch.testing.assert_close(completion_outputs(base, ids, attention, 2).logprobs, expected, atol=0, rtol=0)


def test_checkpoint_holds_the_adapter_resumes_and_merges_for_evaluation(cache_dir, tmp_path):
    config = make_config(cache_dir, tmp_path / "ckpt", "train.steps=2")
    trainer = build_trainer(config, log=lambda s: None)
    trainer.run()
    path = latest_checkpoint(tmp_path / "ckpt", print)
    assert (path / "policy" / "adapter_model.safetensors").is_file()
    assert not (path / "policy" / "model.safetensors").exists()  # no full copy of the base weights
    resumed = build_trainer(config, resume=True, log=lambda s: None)
    for (n, a), b in zip(trainer.models.policy.named_parameters(), resumed.models.policy.parameters()):
        assert torch.equal(a, b), n
    for a, b in zip(trainer.models.target.shadow, resumed.models.target.shadow):
        assert torch.equal(a, b)
    plain = load_config(None, ["model.device=cpu"])
    merged, _ = load_policy(str(path / "policy"), plain, torch.device("cpu"))
    assert not hasattr(merged, "peft_config")
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        want = completion_outputs(trainer.models.policy.eval(), ids, torch.ones_like(ids), 2).logprobs
        got = completion_outputs(merged.eval(), ids, torch.ones_like(ids), 2).logprobs
    # merging changes only the summation order (W + BA)x vs Wx + B(Ax): log-probs agree to float32 round-off
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_plain_weights_are_the_merged_model_and_leave_the_policy_as_it_was(cache_dir, tmp_path):
    """What a vLLM engine receives: the plain model's names and merged tensors, adapters unmerged after."""
    import copy

    policy = build_trainer(make_config(cache_dir, tmp_path / "plain"), log=lambda s: None).models.policy
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # fresh adapters are zero: make the merge change something
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    merged = dict(copy.deepcopy(policy).merge_and_unload().named_parameters())
    with torch.no_grad(), plain_weights(policy) as named:
        pushed = {n: t.clone() for n, t in named}
    assert pushed.keys() == merged.keys()
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, merged[name].detach(), atol=1e-6, rtol=0)
    unmerged = dict(copy.deepcopy(policy).unload().named_parameters())  # the base weights alone
    assert any(not torch.equal(pushed[n], unmerged[n]) for n in pushed)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], atol=1e-6, rtol=0)
