"""popo.step_core: the micro-batch core, the clip-and-step rule and the EMA step that popo's trainer, the TRL bridge
and verl's engine share, and that each is written once in src/."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from popo.algo_config import AlgoConfig
from popo.algorithms import BatchTotals, get_algorithm
from popo.ema import ema_step_, ema_tau, ema_update_
from popo.predictor import Predictor
from popo.seeds import normal_noise
from popo.step_core import PolicyArrays, clip_and_step, loss_and_shares, loss_inputs, metrics_finite

SRC = Path(__file__).resolve().parents[1] / "src" / "popo"


def _arrays(n=3, c=4, h=5, *, target=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, c, dtype=torch.bool)
    mask[0, 2:] = False
    return PolicyArrays(logprobs=-torch.rand(n, c, generator=gen).requires_grad_(True),
                        entropy=torch.rand(n, c, generator=gen), mask=mask,
                        features=torch.randn(n, c, h, generator=gen).requires_grad_(True),
                        target=torch.randn(n, h, generator=gen) if target else None)


def _totals(arrays, credit, positive):
    return BatchTotals(sequences=arrays.mask.shape[0], tokens=int(arrays.mask.sum()),
                       positive_tokens=int(arrays.mask[positive].sum()), weight_sum=float(credit[positive].sum()),
                       max_length=arrays.mask.shape[1])


def test_loss_inputs_pool_predict_and_key_the_noise_per_row():
    cfg, algorithm = AlgoConfig(name="popo"), get_algorithm("popo")
    arrays = _arrays()
    credit, positive = torch.tensor([0.5, 0.0, 0.5]), torch.tensor([True, False, True])
    predictor = Predictor(5, 7, 2)
    keys = torch.tensor([11, 12, 13])
    x = loss_inputs(algorithm, cfg, arrays, credit=credit, positive=positive, totals=_totals(arrays, credit, positive),
                    forwarded_tokens=20, predictor=predictor, row_keys=keys)
    pooled = (arrays.features * arrays.mask.unsqueeze(-1)).sum(1) / arrays.mask.sum(1, keepdim=True)
    torch.testing.assert_close(x.predicted, predictor(pooled))
    assert torch.equal(x.target_noise, normal_noise(keys, 5)) and x.target is arrays.target
    assert x.token_share == float(arrays.mask.sum()) / 20
    assert x.entropy is arrays.entropy  # beta > 0: the entropy enters the loss
    # the same row keeps its draw in another micro-batch
    sub = loss_inputs(algorithm, cfg, PolicyArrays(arrays.logprobs[2:], arrays.entropy[2:], arrays.mask[2:],
                                                   arrays.features[2:], arrays.target[2:]),
                      credit=credit[2:], positive=positive[2:], totals=x.totals, forwarded_tokens=20,
                      predictor=predictor, row_keys=keys[2:])
    assert torch.equal(sub.target_noise[0], x.target_noise[2])


def test_loss_inputs_without_target_have_no_similarity_inputs():
    cfg = AlgoConfig(name="popo", alpha=0.0, beta=0.0)
    arrays = _arrays(target=False)
    credit, positive = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([True, False, True])
    x = loss_inputs(get_algorithm("popo"), cfg, arrays, credit=credit, positive=positive,
                    totals=_totals(arrays, credit, positive), forwarded_tokens=0, row_keys=torch.tensor([1, 2, 3]))
    assert x.predicted is None and x.target is None and x.target_noise is None and x.entropy is None
    assert x.token_share == float(arrays.mask.sum())  # no forwarded tokens counted: divided by 1


def test_loss_and_shares_add_the_entropy_share_and_flag_a_nonfinite_loss():
    cfg, algorithm = AlgoConfig(name="popo", alpha=0.0), get_algorithm("popo")
    arrays = _arrays(target=False)
    credit, positive = torch.tensor([0.5, 0.0, 0.5]), torch.tensor([True, False, True])
    totals = _totals(arrays, credit, positive)
    x = loss_inputs(algorithm, cfg, arrays, credit=credit, positive=positive, totals=totals, forwarded_tokens=40)
    loss, shares = loss_and_shares(algorithm, cfg, x, arrays.entropy, 40)
    assert math.isfinite(float(loss.detach())) and "nonfinite_losses" not in shares
    assert shares["entropy"] == pytest.approx(float(arrays.entropy[arrays.mask].sum()) / 40)
    x.logprobs = torch.where(arrays.mask, arrays.logprobs, arrays.logprobs) * float("nan")
    _, bad = loss_and_shares(algorithm, cfg, x, arrays.entropy, 40)
    assert bad["nonfinite_losses"] == 1.0 and not metrics_finite(bad)
    assert metrics_finite(shares) and not metrics_finite({"loss": float("inf")})


def _model_and_grads(scale: float):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, scale)
    return model, list(model.parameters())


@pytest.mark.parametrize("max_norm", [0.5, 0.0])
def test_clip_and_step_clips_together_then_steps(max_norm):
    model, params = _model_and_grads(1.0)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    norm, stepped = clip_and_step(params, [optimizer], max_norm=max_norm, clip=torch.nn.utils.clip_grad_norm_)
    assert stepped and float(norm) == pytest.approx(math.sqrt(8))  # 8 entries of 1: the norm before clipping
    total = math.sqrt(sum(float((b - p.detach()).square().sum()) for b, p in zip(before, params)))
    assert total == pytest.approx(max_norm if max_norm > 0 else math.sqrt(8), rel=1e-5)  # 0: no clipping


@pytest.mark.parametrize("scale, finite", [(float("nan"), True), (1.0, False)])
def test_clip_and_step_skips_on_a_nonfinite_norm_or_metric(scale, finite):
    model, params = _model_and_grads(scale)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    _, stepped = clip_and_step(params, [optimizer], max_norm=1.0, clip=torch.nn.utils.clip_grad_norm_, finite=finite)
    assert not stepped and all(p.grad is None for p in params)
    optimizer.step()  # a framework that steps itself afterwards (TRL) moves nothing either
    assert all(torch.equal(b, p) for b, p in zip(before, params))


def test_ema_step_is_the_scheduled_lerp():
    target, online = [torch.zeros(4)], [torch.ones(4)]
    cfg = AlgoConfig(name="popo", tau=0.9, tau_schedule="cosine")
    tau = ema_step_((target, online), step=3, total_steps=10, cfg=cfg)
    assert tau == ema_tau(3, 10, 0.9, "cosine")
    expected = [torch.zeros(4)]
    ema_update_(expected, [torch.ones(4)], tau)
    assert torch.equal(target[0], expected[0])


def _calls(pattern: str) -> list[str]:
    return [f"{path.relative_to(SRC)}:{i}" for path in sorted(SRC.rglob("*.py"))
            for i, line in enumerate(path.read_text().splitlines(), 1) if re.search(pattern, line)]


def test_each_step_piece_is_written_once_in_src():
    """`LossInputs(` is built in the core only; the training step's tau schedule and optimizer steps (popo's
    update, its trainer, the TRL and verl integrations) are reached through `ema_step_` and `clip_and_step`.
    (The testbed's supervised warm start and the studies' controls step their own optimizers.)"""
    assert [c.split(":")[0] for c in _calls(r"\bLossInputs\(")] == ["step_core.py"]
    assert [c.split(":")[0] for c in _calls(r"\bema_tau\(")] == ["ema.py", "ema.py"]  # its definition, ema_step_
    steps = [c.split(":")[0] for c in _calls(r"optimizer\.step\(\)")]
    assert [s for s in steps if not s.startswith(("testbed/", "study/"))] == ["step_core.py"], steps


def test_content_noise_seeds_follow_the_row_not_its_place():
    """verl's rows have no position in a global batch: their noise keys hash their tokens, so a row keeps its key
    in any order or split, identical rows share one, and the step and seed change them all."""
    from popo.seeds import content_noise_seeds

    rows = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([5, 6, 7]), torch.tensor([7, 6, 5])]

    def keys(chosen, seed=3, step=1):
        tokens = torch.cat([rows[r] for r in chosen])
        offsets = torch.tensor([0, *torch.tensor([len(rows[r]) for r in chosen]).cumsum(0).tolist()])
        return content_noise_seeds(tokens, offsets, seed, step).tolist()

    whole = keys([0, 1, 2, 3])
    assert whole[0] == whole[2] and len({whole[0], whole[1], whole[3]}) == 3  # token order matters
    assert keys([3, 1]) == [whole[3], whole[1]]
    assert not set(keys([0, 1, 3], step=2)) & set(whole) and not set(keys([0, 1, 3], seed=4)) & set(whole)
    assert all(0 <= k < 2**32 for k in whole)


def test_the_prompt_order_is_seeds_own():
    """`popo.seeds.prompt_order` is the order `PromptStream` visits (every seed of a run comes from popo.seeds)."""
    from popo.data.stream import PromptStream
    from popo.seeds import prompt_order

    stream = PromptStream(7, 3, 11)
    visited = [i for step in range(7) for i in stream.batch(step)]  # three epochs of 7
    assert visited == prompt_order(11, 0, 7) + prompt_order(11, 1, 7) + prompt_order(11, 2, 7)
    assert sorted(prompt_order(11, 0, 7)) == list(range(7)) and prompt_order(11, 0, 7) != prompt_order(11, 1, 7)
