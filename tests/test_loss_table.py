"""The loss table's contract: losses enter through `register_loss`, their metrics are `Shares` that add up over
micro-batches (so a batch split any way reports the one-batch values, means included), a metric is never set
twice, and a registered loss is selectable by name like popo's own."""

from dataclasses import replace

import pytest
import torch

import popo.algorithms as algorithms
from popo.algorithms import PRESETS, BatchTotals, LossInputs, Shares, get_algorithm, register_loss
from popo.config import AlgoConfig, load_config

F64 = torch.float64


def _batch(n=6, width=5, hidden=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])[:n]
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return dict(logprobs=-torch.rand(n, width, generator=g, dtype=F64) * 3,
                old=-torch.rand(n, width, generator=g, dtype=F64) * 3,
                entropy=torch.rand(n, width, generator=g, dtype=F64),
                credit=torch.randn(n, generator=g, dtype=F64), mask=mask,
                positive=torch.tensor([True, False, True, True, False, True])[:n],
                predicted=torch.randn(n, hidden, generator=g, dtype=F64),
                target=torch.randn(n, hidden, generator=g, dtype=F64),
                noise=torch.randn(n, hidden, generator=g, dtype=F64))


def _inputs(b, rows, totals, forwarded) -> LossInputs:
    mask = b["mask"][rows]
    return LossInputs(logprobs=b["logprobs"][rows], mask=mask, credit=b["credit"][rows],
                      positive=b["positive"][rows], totals=totals, token_share=float(mask.sum()) / forwarded,
                      entropy=b["entropy"][rows], predicted=b["predicted"][rows], target=b["target"][rows],
                      old_logprobs=b["old"][rows], target_noise=b["noise"][rows])


@pytest.mark.parametrize("name", ["popo", "grpo", "w-reinforce", "dr-grpo"])
def test_metrics_of_any_split_add_up_to_the_whole_batch(name):
    b = _batch()
    if name == "popo":  # POPO's credit: weights on positives
        b["credit"] = torch.where(b["positive"], b["credit"].abs(), 0.0)
    cfg = replace(AlgoConfig(name=name), **PRESETS[name][1], kl_coef=0.0)  # no reference log-probs here
    algo = get_algorithm(name)
    everything = torch.arange(6)
    m = b["mask"]
    totals = BatchTotals(sequences=6, tokens=int(m.sum()), positive_tokens=int(m[b["positive"]].sum()),
                         weight_sum=float(b["credit"][b["positive"]].sum()), max_length=m.shape[1])
    forwarded = int(m.sum())
    whole_loss, whole = algo.loss(_inputs(b, everything, totals, forwarded), cfg)
    for parts in ([[0, 1, 2], [3, 4, 5]], [[5], [0, 3], [1, 2, 4]]):
        total, summed = Shares(), 0.0
        for rows in parts:
            loss, shares = algo.loss(_inputs(b, torch.tensor(rows), totals, forwarded), cfg)
            total.add(shares)
            summed = summed + loss
        assert float(summed) == pytest.approx(float(whole_loss), abs=1e-12)
        assert total.keys() == whole.keys() and "loss" in total
        for key in whole:
            assert total[key] == pytest.approx(whole[key], abs=1e-12), key
    if name != "popo":  # the means are really means: the clip fraction of the whole batch, by hand
        ratio = torch.exp(b["logprobs"] - b["old"])
        adv = b["credit"][:, None].expand_as(ratio)
        clipped = m & (((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8)))
        assert whole["clip_frac"] == pytest.approx(float(clipped.sum()) / float(m.sum()), abs=1e-12)


def test_shares_refuse_misuse():
    x = LossInputs(logprobs=torch.zeros(1, 1), mask=torch.ones(1, 1, dtype=torch.bool), credit=torch.zeros(1),
                   positive=torch.ones(1, dtype=torch.bool), totals=BatchTotals(1, 1, 1, 1.0, 1), token_share=0.25)
    with pytest.raises(ValueError, match="'loss'"):
        Shares.of(x, {"nll": 1.0})
    shares = Shares.of(x, {"loss": 2.0}, {"kl": 4.0})
    assert shares == {"loss": 2.0, "kl": 1.0}  # a micro-batch mean, weighted by its token share
    with pytest.raises(KeyError, match="never overwritten"):
        shares.put("loss", 3.0)
    with pytest.raises(TypeError, match="must be Shares"):
        shares.add({"loss": 1.0})


def test_a_registered_loss_is_selectable_by_name(monkeypatch):
    monkeypatch.setattr(algorithms, "LOSSES", dict(algorithms.LOSSES))
    monkeypatch.setattr(algorithms, "PRESETS", dict(algorithms.PRESETS))

    @register_loss("token-nll", credit=lambda rewards, lp, lengths, g, cfg: (rewards > 0).to(lp.dtype))
    def token_nll(x, cfg):
        loss = -(x.credit[:, None] * torch.where(x.mask, x.logprobs, 0.0)).sum() / x.totals.tokens
        return loss, Shares.of(x, {"loss": float(loss)})

    algo = get_algorithm("token-nll")
    assert algo.loss is token_nll and algo.name == "token-nll"
    assert not algo.needs_target(AlgoConfig()) and algo.needs_negatives(AlgoConfig())  # the defaults
    assert load_config(None, ["algo.name=token-nll"]).algo.name == "token-nll"
    with pytest.raises(ValueError, match="already registered"):
        register_loss("token-nll", credit=algo.credit)(token_nll)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("grpo", credit=algo.credit)(token_nll)
