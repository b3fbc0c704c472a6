"""The verl advantage estimator "popo" (popo.integrations.verl.advantage): popo's weights on verl's layout."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("verl", reason="verl runs in its own environment: the second part of `make test` (.verl/)")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from popo.credit import popo_weights  # noqa: E402
from popo.integrations.verl.advantage import popo_advantage  # noqa: E402

# Two groups, rows interleaved (verl may reorder rows): group "a" = rows 0, 2, 4 and group "b" = rows 1, 3, 5.
UIDS = np.array(["a", "b", "a", "b", "a", "b"], dtype=object)
REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # a: rows 0, 2 positive; b: row 3 positive
LENGTHS = [2, 3, 3, 1, 2, 4]
T = 4


def _batch(dtype=torch.float64):
    mask = torch.zeros(6, T, dtype=torch.bool)
    rewards = torch.zeros(6, T, dtype=dtype)
    for row, (reward, length) in enumerate(zip(REWARDS, LENGTHS)):
        mask[row, :length] = True
        rewards[row, length - 1] = reward  # outcome reward on the last response token
    # per-token log-probs whose response means are -1, -3, -2, -0.5, -4, -1 (padding holds garbage)
    means = [-1.0, -3.0, -2.0, -0.5, -4.0, -1.0]
    old = torch.full((6, T), 1e6, dtype=dtype)
    for row, (mean, length) in enumerate(zip(means, LENGTHS)):
        old[row, :length] = mean
    return rewards, mask, old, torch.tensor(means, dtype=dtype)


def _algorithm(**popo):
    return OmegaConf.create({"adv_estimator": "popo", "popo": popo})


def test_uniform_weights_by_hand():
    rewards, mask, _, _ = _batch()
    adv, ret = popo_advantage(rewards, mask, index=UIDS, config=_algorithm(weight_mode="uniform"))
    expected_rows = torch.tensor([0.5, 0.0, 0.5, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(adv, expected_rows.unsqueeze(1) * mask)  # the row's weight on each response token
    assert torch.equal(ret, adv)


def test_softmax_weights_by_hand_from_old_logprobs():
    rewards, mask, old, _ = _batch()
    adv, _ = popo_advantage(rewards, mask, index=UIDS, config=_algorithm(), old_log_probs=old)
    # group a: positives rows 0 (mean -1) and 2 (mean -2): softmax = 1/(1+e^-1), e^-1/(1+e^-1)
    w0 = 1.0 / (1.0 + math.exp(-1.0))
    expected_rows = torch.tensor([w0, 0.0, 1.0 - w0, 1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(adv, expected_rows.unsqueeze(1) * mask, rtol=0, atol=1e-12)


@pytest.mark.parametrize("settings", [
    dict(weight_mode="softmax", weight_temperature=0.7),
    dict(weight_mode="uniform"),
    dict(weight_mode="softmax", length_normalize=True, reward_threshold=0.5),
])
def test_equals_popo_weights_called_directly(settings):
    rewards, mask, old, means = _batch()
    adv, _ = popo_advantage(rewards, mask, index=UIDS, config=_algorithm(**settings), old_log_probs=old)
    # the same rows laid out group by group, as popo_weights expects
    order = torch.tensor([0, 2, 4, 1, 3, 5])
    direct = popo_weights(means[order], rewards.sum(-1)[order], 3, mode=settings["weight_mode"],
                          temperature=settings.get("weight_temperature", 1.0),
                          threshold=settings.get("reward_threshold", 0.0),
                          lengths=mask.sum(-1)[order], length_normalize=settings.get("length_normalize", False))
    expected = torch.empty(6, dtype=torch.float64)
    expected[order] = direct
    assert torch.equal(adv, expected.unsqueeze(1) * mask)


def test_groups_of_different_sizes():
    rewards, mask, old, _ = _batch()
    uids = np.array(["a", "b", "a", "b", "a", "c"], dtype=object)  # sizes 3, 2, 1
    adv, _ = popo_advantage(rewards, mask, index=uids, config=_algorithm(), old_log_probs=old)
    rows = adv.sum(-1) / mask.sum(-1)
    w0 = 1.0 / (1.0 + math.exp(-1.0))
    torch.testing.assert_close(rows, torch.tensor([w0, 0.0, 1.0 - w0, 1.0, 0.0, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_softmax_without_old_logprobs_is_an_error():
    rewards, mask, _, _ = _batch()
    with pytest.raises(ValueError, match="weight_mode=uniform"):
        popo_advantage(rewards, mask, index=UIDS, config=_algorithm(weight_mode="softmax"))


def test_unknown_popo_key_is_an_error():
    rewards, mask, _, _ = _batch()
    with pytest.raises(ValueError, match="unknown key"):
        popo_advantage(rewards, mask, index=UIDS, config=_algorithm(weight_mode="uniform", wieght_temperature=2))


def test_through_verls_compute_advantage():
    """verl's own dispatcher calls the registered estimator with the uid groups (and no old log-probs)."""
    from verl import DataProto

    try:  # the trainer module pulls in the rollout server stack (cachetools, uvicorn, ...)
        from verl.trainer.ppo.ray_trainer import compute_advantage
    except ImportError as err:
        pytest.skip(f"verl.trainer.ppo.ray_trainer does not import here: {err}")

    from popo.integrations.verl.plugin import register

    register()
    rewards, mask, old, _ = _batch(torch.float32)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask.long(), "old_log_probs": old},
        non_tensors={"uid": UIDS})
    out = compute_advantage(data, adv_estimator="popo", config=_algorithm(weight_mode="uniform"))
    expected_rows = torch.tensor([0.5, 0.0, 0.5, 1.0, 0.0, 0.0])
    assert torch.equal(out.batch["advantages"], expected_rows.unsqueeze(1) * mask)
    with pytest.raises(ValueError, match="does not pass"):  # softmax: verl does not hand over old_log_probs
        compute_advantage(data, adv_estimator="popo", config=_algorithm(weight_mode="softmax"))
