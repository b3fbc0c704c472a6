"""The verl policy loss "popo" (popo.integrations.verl.loss) against popo's own `popo_loss`."""

from __future__ import annotations

import pytest

pytest.importorskip("verl", reason="verl runs in its own environment: the second part of `make test` (.verl/)")

import torch  # noqa: E402

from popo.credit import popo_weights  # noqa: E402
from popo.integrations.verl.loss import popo_policy_loss  # noqa: E402
from popo.losses import popo_loss  # noqa: E402

N, T, G = 8, 6, 4
LENGTHS = [6, 3, 1, 5, 4, 2, 6, 3]
REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(N, T, generator=gen, dtype=torch.float64) * 3  # [N, T]
    mask = torch.zeros(N, T, dtype=torch.bool)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = True
    logp = torch.where(mask, logp, torch.tensor(float("nan"), dtype=torch.float64))  # padding never read
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    means = torch.where(mask, logp, 0.0).sum(-1) / mask.sum(-1)
    weights = popo_weights(means, rewards, G)  # [N]
    advantages = weights.unsqueeze(1) * mask  # the estimator's layout
    n_plus = int((mask & (weights > 0).unsqueeze(1)).sum())
    return logp, mask, weights, advantages, n_plus


def _config(**info):
    return {"global_batch_info": {"dp_size": 1, "global_batch_size": None, "loss_scale_factor": None, **info}}


def _verl(logp, mask, advantages, config):
    leaf = logp.detach().clone().requires_grad_(True)
    loss, metrics = popo_policy_loss(old_log_prob=leaf.detach(), log_prob=leaf, advantages=advantages,
                                     response_mask=mask, loss_agg_mode="token-mean", config=config)
    loss.backward()
    return loss.detach(), torch.nan_to_num(leaf.grad, nan=0.0), metrics


def _popo(logp, mask, weights):
    leaf = logp.detach().clone().requires_grad_(True)
    loss, _ = popo_loss(leaf, mask, weights, alpha=0.0, beta=0.0)
    loss.backward()
    return loss.detach(), torch.nan_to_num(leaf.grad, nan=0.0)


def test_one_micro_batch_equals_popo_loss():
    logp, mask, weights, adv, n_plus = _batch()
    ref_loss, ref_grad = _popo(logp, mask, weights)
    loss, grad, metrics = _verl(logp, mask, adv, _config(batch_num_tokens=n_plus))
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert metrics["actor/popo_zero_credit_token_frac"] > 0  # this batch still holds its negatives


def test_local_count_without_global_info_equals_popo_loss():
    logp, mask, weights, adv, _ = _batch(1)
    ref_loss, ref_grad = _popo(logp, mask, weights)
    loss, grad, _ = _verl(logp, mask, adv, None)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("split", [3, 4, 6])
def test_two_micro_batches_sum_to_popo_loss(split):
    logp, mask, weights, adv, n_plus = _batch(2)
    ref_loss, ref_grad = _popo(logp, mask, weights)
    parts = [_verl(logp[rows], mask[rows], adv[rows], _config(batch_num_tokens=n_plus))
             for rows in (slice(0, split), slice(split, N))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([parts[0][1], parts[1][1]]), ref_grad, rtol=0, atol=1e-12)


def test_data_parallel_average_gives_popo_gradient():
    """Two ranks with half the rows each: the loss is scaled by dp_size, so the average (what FSDP reduces)
    of the two ranks' gradients equals popo's gradient on the whole batch."""
    logp, mask, weights, adv, n_plus = _batch(3)
    ref_loss, ref_grad = _popo(logp, mask, weights)
    ranks = [_verl(logp[rows], mask[rows], adv[rows], _config(dp_size=2, batch_num_tokens=n_plus))
             for rows in (slice(0, 4), slice(4, N))]
    torch.testing.assert_close((ranks[0][0] + ranks[1][0]) / 2, ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([ranks[0][1], ranks[1][1]]) / 2, ref_grad, rtol=0, atol=1e-12)


def test_positives_only_batch_uses_verls_own_token_count():
    """With only the positive rows in the batch (what the engine subclass will forward), verl's
    batch_num_tokens is popo's N+ and the zero-credit metric is 0."""
    logp, mask, weights, adv, n_plus = _batch(4)
    keep = weights > 0
    ref_loss, ref_grad = _popo(logp, mask, weights)
    loss, grad, metrics = _verl(logp[keep], mask[keep], adv[keep],
                                _config(batch_num_tokens=int(mask[keep].sum())))
    assert int(mask[keep].sum()) == n_plus
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad[keep], rtol=0, atol=1e-12)
    assert metrics["actor/popo_zero_credit_token_frac"] == 0.0


def test_rejects_other_aggregation_and_rollout_correction():
    logp, mask, _, adv, n_plus = _batch()
    with pytest.raises(ValueError, match="token-mean"):
        popo_policy_loss(logp, logp, adv, mask, loss_agg_mode="seq-mean-token-mean", config=None)
    with pytest.raises(ValueError, match="rollout"):
        popo_policy_loss(logp, logp, adv, mask, config=None, rollout_is_weights=torch.ones_like(logp))
    with pytest.raises(ValueError, match="batch_num_tokens"):
        popo_policy_loss(logp, logp, adv, mask, config=_config(dp_size=2))


def test_through_verls_ppo_loss_with_entropy():
    """verl's engine-level `ppo_loss` with loss_mode=popo and entropy_coeff=beta, on a positives-only
    micro-batch in verl's unpadded layout, equals popo_loss with beta (loss and gradients)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    from popo.integrations.verl.plugin import register

    register()
    beta = 0.03
    logp, mask, weights, adv, n_plus = _batch(5)
    gen = torch.Generator().manual_seed(7)
    entropy = torch.rand(N, T, generator=gen, dtype=torch.float64)
    keep = weights > 0
    logp, mask, weights, adv, entropy = logp[keep], mask[keep], weights[keep], adv[keep], entropy[keep]
    rows, prompt_len = int(keep.sum()), 2
    lengths = mask.sum(-1)

    # verl's no-padding layout: per row, prompt then response tokens, flattened; the model's output at
    # position p predicts token p + 1, so a response token j sits at prompt_len - 1 + j of its row.
    flat_lp, flat_ent = [], []
    for row in range(rows):
        seq = prompt_len + int(lengths[row])
        lp_row = torch.full((seq,), -7.0, dtype=torch.float64)
        ent_row = torch.full((seq,), 9.0, dtype=torch.float64)
        lp_row[prompt_len - 1: seq - 1] = logp[row, : lengths[row]]
        ent_row[prompt_len - 1: seq - 1] = entropy[row, : lengths[row]]
        flat_lp.append(lp_row)
        flat_ent.append(ent_row)
    flat_lp = torch.cat(flat_lp).requires_grad_(True)
    flat_ent = torch.cat(flat_ent).requires_grad_(True)
    attention = torch.cat([torch.ones(rows, prompt_len, dtype=torch.long), mask.long()], dim=1)
    data = TensorDict({
        "prompts": torch.ones(rows, prompt_len, dtype=torch.long),
        "responses": torch.ones(rows, T, dtype=torch.long),
        "attention_mask": attention,
        "response_mask": mask.long(),
        "old_log_probs": torch.nan_to_num(logp.detach(), nan=0.0),
        "advantages": adv,
    }, batch_size=[rows])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=rows)
    config = FSDPActorConfig(rollout_n=G, ppo_mini_batch_size=rows, ppo_micro_batch_size_per_gpu=rows,
                             entropy_coeff=beta, loss_agg_mode="token-mean",
                             policy_loss={"loss_mode": "popo"})
    loss, _ = ppo_loss(config, {"log_probs": flat_lp, "entropy": flat_ent}, data)
    loss.backward()

    leaf_lp = logp.detach().clone().requires_grad_(True)
    leaf_ent = entropy.detach().clone().requires_grad_(True)
    ref, _ = popo_loss(leaf_lp, mask, weights, token_entropy=leaf_ent, alpha=0.0, beta=beta)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=0, atol=1e-10)
    got_lp = torch.zeros_like(leaf_lp)
    got_ent = torch.zeros_like(leaf_ent)
    offset = 0
    for row in range(rows):
        n = int(lengths[row])
        got_lp[row, :n] = flat_lp.grad[offset + prompt_len - 1: offset + prompt_len - 1 + n]
        got_ent[row, :n] = flat_ent.grad[offset + prompt_len - 1: offset + prompt_len - 1 + n]
        offset += prompt_len + n
    torch.testing.assert_close(got_lp, torch.nan_to_num(leaf_lp.grad, nan=0.0), rtol=0, atol=1e-10)
    torch.testing.assert_close(got_ent, torch.nan_to_num(leaf_ent.grad, nan=0.0), rtol=0, atol=1e-10)
