"""popo.companions: the one checkpoint format of POPO's target, predictor and predictor optimizer (popo's trainer,
TRL and verl write it), its round trip through `Models`, and checkpoints of the layout before it."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from popo import companions
from popo.errors import SetupError
from popo.models import Models, Snapshot
from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer

SPEC = TinyModelSpec(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=32)


def _models(seed: int) -> tuple[Models, object]:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    models = Models.build(build_tiny_qwen2(tokenizer, SPEC, seed=seed), with_target=True, with_reference=False,
                          predictor_width=8, predictor_layers=2, device=torch.device("cpu"))
    with torch.no_grad():  # a target that differs from the policy, so a mix-up shows
        for p in models.target.parameters():
            p.add_(0.5)
    return models, tokenizer


def _state(models: Models) -> dict[str, torch.Tensor]:
    return {**{f"target.{k}": v.clone() for k, v in models.target.state_dict().items()},
            **{f"predictor.{k}": v.clone() for k, v in models.predictor.state_dict().items()}}


def test_round_trip_through_the_trainers_checkpoint(tmp_path):
    saved, tokenizer = _models(0)
    Snapshot(saved.policy, saved.target, saved.predictor, {}).write(tmp_path, tokenizer)
    assert sorted(p.name for p in (tmp_path / "popo").iterdir()) == ["predictor.safetensors", "state.json",
                                                                      "target.safetensors"]
    loaded, _ = _models(1)
    loaded.load(tmp_path)
    want, got = _state(saved), _state(loaded)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_checkpoint_of_the_layout_before_popo_folder_still_loads(tmp_path):
    """target/ (save_pretrained) and predictor.safetensors at the top: checkpoints written before this format."""
    saved, tokenizer = _models(0)
    saved.policy.save_pretrained(tmp_path / "policy")
    saved.target.save_pretrained(tmp_path / "target")
    save_file({k: v.contiguous() for k, v in saved.predictor.state_dict().items()}, tmp_path / "predictor.safetensors")
    loaded, _ = _models(1)
    loaded.load(tmp_path)
    want, got = _state(saved), _state(loaded)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_per_rank_folders_optimizer_and_counters(tmp_path):
    predictor = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(predictor.parameters())
    predictor(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    tied = torch.arange(6.0).reshape(2, 3)
    where = companions.folder(tmp_path, rank=1, world=2)
    assert where == tmp_path / "popo" / "world_size_2_rank_1"
    companions.write(where, companions.Companions(target={"a": tied, "b": tied}, predictor=predictor.state_dict(),
                                                  predictor_optimizer=optimizer.state_dict(), state={"steps": 7}))
    back = companions.read(where, target=True, predictor=True, predictor_optimizer=True)
    assert list(back.target) == ["a"] and torch.equal(back.target["a"], tied)  # a tied tensor is stored once
    assert back.state == {"steps": 7}
    fresh = torch.optim.AdamW(copy.deepcopy(predictor).parameters())
    fresh.load_state_dict(back.predictor_optimizer)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(SetupError, match="predictor_optimizer.pt is missing"):
        companions.read(companions.folder(tmp_path), target=False, predictor=False, predictor_optimizer=True)
    companions.write(tmp_path / "empty", companions.Companions())  # nothing to write: no folder
    assert not (tmp_path / "empty").exists()
