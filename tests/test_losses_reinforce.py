"""NSR and W-REINFORCE (Zhu et al. 2025): signed, ungrouped credit through the loss table's `reinforce` entry.

Credit is +lambda for a correct rollout and -1 for an incorrect one (lambda = 0: NSR, 0.1: W-REINFORCE). With one
update per batch the clipped surrogate's ratio is 1, so the loss value is -(1/N) sum_i A_i (seq-mean-token-mean)
and the gradient of token t of row i is -A_i / (N L_i): REINFORCE with the aggregation GRPO uses.
"""

from dataclasses import replace

import pytest
import torch

from popo.algorithms import LOSSES, PRESETS, BatchTotals, LossInputs, get_algorithm
from popo.config import AlgoConfig, load_config
from popo.credit import signed_rewards
from popo.errors import ConfigError

F64 = torch.float64


def _cfg(name: str, **over) -> AlgoConfig:
    base, preset = PRESETS[name]
    return replace(AlgoConfig(name=name), **{**preset, **over})


def test_signed_rewards_hand_values():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0])
    assert signed_rewards(rewards, positive_weight=0.1).tolist() == pytest.approx([0.1, -1, 0.1, -1, 0.1], abs=1e-7)
    assert signed_rewards(rewards, positive_weight=0.0).tolist() == [0.0, -1, 0.0, -1, 0.0]
    # the threshold is strict: 0.5 is not above 0.5
    assert signed_rewards(rewards, positive_weight=1.0, threshold=0.5).tolist() == [1.0, -1, -1, -1, 1.0]
    ints = signed_rewards(torch.tensor([1, 0]), positive_weight=0.1)
    assert ints.dtype == torch.float32 and not ints.requires_grad
    assert signed_rewards(torch.tensor([1.0, 0.0], dtype=F64), positive_weight=0.1).dtype == F64
    with pytest.raises(ValueError, match="positive_weight >= 0"):
        signed_rewards(rewards, positive_weight=-0.5)


def test_credit_ignores_the_group():
    # unlike GRPO, a rollout's credit does not depend on its siblings: an all-wrong group is all -1
    cfg = _cfg("w-reinforce")
    credit = get_algorithm("w-reinforce").credit(torch.tensor([0.0, 0, 0, 0, 1, 1, 0, 1]), None, None, 4, cfg)
    assert credit.tolist() == pytest.approx([-1, -1, -1, -1, 0.1, 0.1, -1, 0.1], abs=1e-7)


def _inputs(logprobs, mask, credit, positive):
    n = logprobs.shape[0]
    totals = BatchTotals(sequences=n, tokens=int(mask.sum()), positive_tokens=int(mask[positive].sum()),
                         weight_sum=0.0, max_length=mask.shape[1])
    return LossInputs(logprobs=logprobs, mask=mask, credit=credit, positive=positive, totals=totals)


@pytest.mark.parametrize("name,lam", [("nsr", 0.0), ("w-reinforce", 0.1)])
def test_loss_value_and_gradient_by_hand(name, lam):
    # rows of lengths 2, 1, 3; rewards 1, 0, 0 -> credit (lam, -1, -1)
    logprobs = torch.tensor([[-0.5, -1.0, 0.0], [-2.0, 0.0, 0.0], [-0.1, -0.2, -0.3]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    cfg = _cfg(name)
    algo = get_algorithm(name)
    credit = algo.credit(rewards, None, None, 3, cfg)
    assert credit.tolist() == pytest.approx([lam, -1.0, -1.0], abs=1e-12)
    loss, metrics = algo.loss(_inputs(logprobs, mask, credit, rewards > 0), cfg)
    # ratio 1 everywhere: loss = -(1/3) (lam - 1 - 1)
    assert float(loss.detach()) == pytest.approx((2.0 - lam) / 3, abs=1e-12)
    loss.backward()
    expected = torch.tensor([[-lam / 6, -lam / 6, 0.0], [1 / 3, 0.0, 0.0], [1 / 9, 1 / 9, 1 / 9]], dtype=F64)
    torch.testing.assert_close(logprobs.grad, expected, atol=1e-12, rtol=0)
    assert metrics["num_tokens"] == 6
    if lam == 0:  # NSR: a correct rollout gets exactly no gradient
        assert torch.all(logprobs.grad[0] == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_gradient_equals_reinforce_loop(seed, aggregation):
    # the loss table's gradient against REINFORCE written row by row: d/dlogp of -(1/N) sum_i A_i mean_t logp_it
    # (seq-mean-token-mean) or -(1/T) sum_i A_i sum_t logp_it (token-mean)
    gen = torch.Generator().manual_seed(seed)
    n, c = 6, 5
    logprobs = (-torch.rand(n, c, generator=gen, dtype=F64)).requires_grad_()
    lengths = torch.randint(1, c + 1, (n,), generator=gen)
    mask = torch.arange(c).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randint(0, 2, (n,), generator=gen).to(F64)
    cfg = _cfg("w-reinforce", aggregation=aggregation)
    credit = get_algorithm("w-reinforce").credit(rewards, None, None, n, cfg)
    loss, _ = get_algorithm("w-reinforce").loss(_inputs(logprobs, mask, credit, rewards > 0), cfg)
    (grad,) = torch.autograd.grad(loss, logprobs)
    reference = torch.zeros(n, c, dtype=F64, requires_grad=True)
    total = torch.zeros((), dtype=F64)
    for i in range(n):
        row = (logprobs.detach() + reference)[i, : int(lengths[i])]
        a = 0.1 if rewards[i] > 0 else -1.0
        total = total - (a * row.mean() / n if aggregation == "seq-mean-token-mean" else a * row.sum() / int(mask.sum()))
    (expected,) = torch.autograd.grad(total, reference)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


def test_nsr_never_forwards_positives_and_filters_all_correct_groups():
    nsr, w = get_algorithm("nsr"), get_algorithm("w-reinforce")
    assert nsr is w is LOSSES["reinforce"]
    assert nsr.zero_credit_inert(_cfg("nsr")) and not nsr.zero_credit_inert(_cfg("nsr", kl_coef=0.04))
    assert nsr.needs_negatives(_cfg("nsr")) and not nsr.needs_target(_cfg("nsr"))
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # NSR learns only from negatives; W-REINFORCE from any rollout
    assert nsr.group_has_signal(rewards, _cfg("nsr")).tolist() == [False, True, True]
    assert w.group_has_signal(rewards, _cfg("w-reinforce")).tolist() == [True, True, True]


def test_presets_resolve_through_the_config(tmp_path):
    assert load_config(None, ["algo.name=nsr"]).algo.positive_weight == 0.0
    assert load_config(None, ["algo.name=w-reinforce"]).algo.positive_weight == 0.1
    assert load_config(None, ["algo.name=w-reinforce", "algo.positive_weight=0.3"]).algo.positive_weight == 0.3
    with pytest.raises(ConfigError, match="algo.positive_weight must be >= 0"):
        load_config(None, ["algo.name=nsr", "algo.positive_weight=-1"])
