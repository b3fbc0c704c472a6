"""GRPO rows with zero advantage are left out of the forward/backward pass (`drop_inert_rows`).

Without a KL term, a row's clipped surrogate is -min(rho A, clip(rho) A) = 0 for A = 0 whatever the
policy, so its gradient is exactly zero. Leaving such rows out while the loss normalisers still count
them must give the same update as forwarding the whole batch. The reference here forwards every row
(the same code path with the shortcut switched off). The optimizer is plain SGD with lr 1, so the weight change is the gradient itself (AdamW's first
step would hide a wrong gradient scale). The model runs in float64; the token log-probs are float32
by design (`popo.logprobs`), hence atol 1e-6.
"""

from dataclasses import replace

import pytest
import torch

from popo.algorithms import LOSSES
from popo.config import AlgoConfig
from popo.credit import grpo_advantages, signed_rewards
from popo.rollout.base import Rollouts
from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer
from popo.models import Models
from popo.update import drop_inert_rows, update_policy


def _batch(gen: torch.Generator, groups: int, group_size: int, vocab: int) -> Rollouts:
    n, p, c = groups * group_size, 5, 7
    prompt_ids = torch.randint(3, vocab, (n, p), generator=gen)
    prompt_mask = torch.ones(n, p, dtype=torch.bool)
    prompt_mask[::3, :2] = False  # some left padding
    completion_ids = torch.randint(3, vocab, (n, c), generator=gen)
    lengths = torch.randint(1, c + 1, (n,), generator=gen)
    completion_mask = torch.arange(c).unsqueeze(0) < lengths.unsqueeze(1)  # [n, c]
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask,
                    torch.zeros(n, c), torch.zeros(n, dtype=torch.bool), [""] * n, group_size=group_size)


def _step(algorithm, cfg, batch, credit, positive, seed=0, sgd=True):
    """(weight change [P], metrics) of one update from a fixed initial model."""
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, TinyModelSpec(hidden_size=32, num_hidden_layers=2,
                                                      intermediate_size=64), seed=seed).double()
    params = list(model.parameters())
    before = torch.cat([p.detach().flatten() for p in params])
    optimizer = torch.optim.SGD(params, lr=1.0) if sgd else torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    metrics = update_policy(Models(policy=model), optimizer, algorithm, cfg, batch, credit, positive,
                            max_length=7, token_budget=10_000, grad_clip=0.0)
    return torch.cat([p.detach().flatten() for p in params]) - before, metrics


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_leaving_out_zero_advantage_rows_gives_the_same_update(aggregation):
    gen = torch.Generator().manual_seed(0)
    g = 4
    # groups: mixed, all wrong (A = 0), mixed, all right (A = 0)
    rewards = torch.tensor([1., 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    batch = _batch(gen, 4, g, vocab=52)
    credit = grpo_advantages(rewards, g, scale_by_std=True)
    assert (credit == 0).sum() == 8  # half of the rows are inert
    cfg = AlgoConfig(name="grpo", kl_coef=0.0, aggregation=aggregation)
    grpo = LOSSES["grpo"]
    fast, fast_metrics = _step(grpo, cfg, batch, credit, rewards > 0)
    reference, ref_metrics = _step(replace(grpo, zero_credit_inert=lambda c: False), cfg, batch, credit, rewards > 0)
    assert reference.abs().max() > 1e-4  # the update is not trivially zero
    assert torch.allclose(fast, reference, atol=1e-6, rtol=0)
    assert fast_metrics["loss"] == pytest.approx(ref_metrics["loss"], abs=1e-6)
    assert fast_metrics["trained_tokens"] == ref_metrics["trained_tokens"]  # normalisers count every row
    kept = int(batch.completion_mask[credit != 0].sum())
    assert fast_metrics["forwarded_tokens"] == kept < ref_metrics["forwarded_tokens"] == ref_metrics["trained_tokens"]


def test_nsr_leaves_out_its_positives_with_the_same_update():
    # NSR gives correct rollouts credit 0: they are not forwarded, and the update equals the full forward's
    gen = torch.Generator().manual_seed(3)
    rewards = torch.tensor([1., 0, 0, 1, 1, 1, 1, 1])
    batch = _batch(gen, 2, 4, vocab=52)
    credit = signed_rewards(rewards, positive_weight=0.0)
    cfg = AlgoConfig(name="nsr", positive_weight=0.0)
    nsr = LOSSES["reinforce"]
    fast, fast_metrics = _step(nsr, cfg, batch, credit, rewards > 0)
    reference, ref_metrics = _step(replace(nsr, zero_credit_inert=lambda c: False), cfg, batch, credit, rewards > 0)
    assert reference.abs().max() > 1e-4
    assert torch.allclose(fast, reference, atol=1e-6, rtol=0)
    assert fast_metrics["forwarded_tokens"] == int(batch.completion_mask[rewards == 0].sum())


def test_all_rows_inert_still_takes_the_zero_gradient_step():
    # an all-zero-advantage batch: AdamW still takes its step (here: weight decay), as it would after a
    # full forward that produced exactly zero gradients
    gen = torch.Generator().manual_seed(1)
    batch = _batch(gen, 2, 4, vocab=52)
    credit = torch.zeros(8)
    cfg = AlgoConfig(name="grpo", kl_coef=0.0)
    grpo = LOSSES["grpo"]
    fast, _ = _step(grpo, cfg, batch, credit, torch.zeros(8, dtype=torch.bool), sgd=False)
    reference, _ = _step(replace(grpo, zero_credit_inert=lambda c: False), cfg, batch, credit,
                         torch.zeros(8, dtype=torch.bool), sgd=False)
    assert reference.abs().max() > 0  # weight decay moved the weights
    assert torch.equal(fast, reference)


def test_rows_are_kept_when_a_kl_term_gives_them_a_gradient():
    gen = torch.Generator().manual_seed(2)
    batch = _batch(gen, 2, 4, vocab=52)
    credit = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    grpo, positive = LOSSES["grpo"], credit > 0
    kept = drop_inert_rows(grpo, AlgoConfig(name="grpo", kl_coef=0.04), batch, credit, positive, None, 30,
                           _OneProcess())
    assert kept[0].num_rollouts == 8 and kept[4] == 30
    kept = drop_inert_rows(grpo, AlgoConfig(name="grpo", kl_coef=0.0), batch, credit, positive, None, 30,
                           _OneProcess())
    assert kept[0].num_rollouts == 2 and kept[1].tolist() == [1.0, -1.0]
    assert kept[4] == int(batch.completion_mask[1:3].sum())
    popo = LOSSES["popo"]  # POPO never drops rows here: the trainer already hands in positives only
    assert drop_inert_rows(popo, AlgoConfig(), batch, credit, positive, None, 30, _OneProcess())[0] is batch


class _OneProcess:
    def sum_values(self, values):
        return [float(v) for v in values]
