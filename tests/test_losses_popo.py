"""Tests for popo.losses.popo_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from popo.credit import popo_weights
from popo.ema import ema_update_, freeze_
from popo.losses import popo_loss
from popo.predictor import Predictor
from popo.step_log import weight_entropy

F64 = torch.float64
NAN = float("nan")

# ---------------------------------------------------------------------------
# A hand-computable batch: 2 prompts x 3 rollouts x 4 tokens.
# Positives: row 0 (w=0.25), row 2 (w=0.75), row 4 (w=1.0); rows 1, 3, 5 negative.
# Negatives and masked positions hold NaN: they must not matter.
# ---------------------------------------------------------------------------


def hand_batch():
    logp = torch.tensor([
        [-1.0, -2.0, NAN, NAN],     # row 0, 2 tokens, sum(-logp) = 3
        [NAN, NAN, NAN, NAN],       # row 1, negative
        [-0.5, -0.5, -1.0, NAN],    # row 2, 3 tokens, sum(-logp) = 2
        [NAN, NAN, NAN, NAN],       # row 3, negative
        [-2.0, -1.0, -1.0, -4.0],   # row 4, 4 tokens, sum(-logp) = 8
        [NAN, NAN, NAN, NAN],       # row 5, negative
    ], dtype=F64)
    mask = torch.tensor([
        [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0],
    ], dtype=torch.bool)
    weights = torch.tensor([0.25, 0.0, 0.75, 0.0, 1.0, 0.0], dtype=F64)
    pred = torch.tensor([[1.0, 0.0], [NAN, NAN], [1.0, 1.0], [NAN, 1.0], [3.0, 4.0], [0.0, 0.0]],
                        dtype=F64)
    target = torch.tensor([[1.0, 0.0], [NAN, 2.0], [1.0, 0.0], [1.0, 1.0], [4.0, 3.0], [NAN, NAN]],
                          dtype=F64)
    ent = torch.tensor([
        [0.5, 1.0, NAN, NAN],       # sum 1.5
        [NAN, NAN, NAN, NAN],
        [0.2, 0.4, 0.6, NAN],       # sum 1.2
        [NAN, NAN, NAN, NAN],
        [1.0, 0.5, 0.25, 0.25],     # sum 2.0
        [NAN, NAN, NAN, NAN],
    ], dtype=F64)
    return logp, mask, weights, pred, target, ent


# N+ = 2 + 3 + 4 = 9 positive tokens; W = 0.25 + 0.75 + 1.0 = 2
NLL = (0.25 * 3 + 0.75 * 2 + 1.0 * 8) / 9               # 10.25 / 9 = 1.13888...
# cosines: row0 [1,0]·[1,0] = 1; row2 [1,1]·[1,0]/sqrt2 = 1/sqrt2; row4 (12+12)/(5*5) = 0.96
SIM = -(0.25 * 1.0 + 0.75 / math.sqrt(2.0) + 1.0 * 0.96) / 2  # -0.870165...
ENT_LOSS = -(1.5 + 1.2 + 2.0) / 9                        # -4.7 / 9 = -0.52222...
TOTAL = NLL + 0.1 * SIM + 0.01 * ENT_LOSS                # 1.046650...
# weight entropy: -(0.25 ln .25 + .75 ln .75 + 1 ln 1) / 2 = mean over the two prompts
W_ENT = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / 2


def test_hand_values_every_term():
    logp, mask, w, pred, target, ent = hand_batch()
    logp.requires_grad_(True)
    ent.requires_grad_(True)
    pred.requires_grad_(True)
    loss, m = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        token_entropy=ent, alpha=0.1, beta=0.01, noise_std=0.0)
    assert abs(loss.item() - TOTAL) < 1e-12
    assert abs(m["nll"] - NLL) < 1e-12
    assert abs(m["sim"] - SIM) < 1e-12
    assert abs(m["cos_sim"] + SIM) < 1e-12
    assert abs(m["ent_loss"] - ENT_LOSS) < 1e-12
    assert abs(m["entropy"] - 4.7 / 9) < 1e-12       # mean positive-token entropy
    assert m["num_positive"] == 3.0 and m["num_positive_tokens"] == 9.0
    assert "weight_entropy" not in m  # the step record's, per prompt over the whole batch (popo.step_log)
    assert abs(weight_entropy(w, w > 0, 3) - W_ENT) < 1e-12
    assert abs(m["loss"] - TOTAL) < 1e-12
    assert all(isinstance(v, float) for v in m.values())

    loss.backward()
    # dL/dlogp_it = -w_i / N+ on positive masked tokens, exactly 0 elsewhere (no NaN)
    g = torch.zeros(6, 4, dtype=F64)
    g[0, :2] = -0.25 / 9
    g[2, :3] = -0.75 / 9
    g[4, :] = -1.0 / 9
    torch.testing.assert_close(logp.grad, g, atol=1e-12, rtol=0)
    # dL/dH_it = -beta / N+ on the same tokens
    torch.testing.assert_close(ent.grad, (g != 0).to(F64) * (-0.01 / 9), atol=1e-12, rtol=0)
    # predicted features: only positive rows get gradient, all finite
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[[1, 3, 5]] == 0).all() and (pred.grad[[0, 2, 4]] != 0).any()
    # row 0: pred == target direction -> cos at its max, d cos / d pred = 0
    torch.testing.assert_close(pred.grad[0], torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)


def test_terms_switch_off():
    logp, mask, w, pred, target, ent = hand_batch()
    pred.requires_grad_(True)
    loss, m = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        token_entropy=ent, alpha=0.0, beta=0.0, noise_std=0.0)
    assert abs(loss.item() - NLL) < 1e-12
    assert m["sim"] == 0.0 and m["ent_loss"] == 0.0
    assert abs(m["entropy"] - 4.7 / 9) < 1e-12          # still reported
    # alpha = 0: predictor not in the graph
    logp.requires_grad_(True)
    loss, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        alpha=0.0, noise_std=0.0)
    loss.backward()
    assert pred.grad is None
    # features missing: L_sim skipped even with alpha > 0
    loss2, m2 = popo_loss(logp.detach(), mask, w, token_entropy=None, alpha=0.1, beta=0.01)
    assert abs(loss2.item() - NLL) < 1e-12 and m2["entropy"] == 0.0


def test_positives_only_equals_all_rows_masked():
    gen = torch.Generator().manual_seed(0)
    n, t, h = 8, 5, 6
    base = torch.randn(n, t, generator=gen, dtype=F64)
    feats = torch.randn(n, h, generator=gen, dtype=F64)
    target = torch.randn(n, h, generator=gen, dtype=F64)
    ent_base = torch.rand(n, t, generator=gen, dtype=F64)
    mask = torch.rand(n, t, generator=gen) > 0.3
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0], dtype=F64)
    weights = popo_weights(-torch.rand(n, generator=gen, dtype=F64), rewards, 4)
    pos = weights > 0
    torch.manual_seed(1)
    predictor = Predictor(h, width=4).double()

    def run(rows, poison):
        scale = torch.tensor(1.3, dtype=F64, requires_grad=True)  # a shared "parameter"
        lp = (scale * base)[rows]
        ent = (scale * ent_base)[rows]
        if poison:  # negatives hold garbage when all rows are passed
            lp = torch.where(pos[rows].unsqueeze(1), lp, torch.full_like(lp, NAN))
            ent = torch.where(pos[rows].unsqueeze(1), ent, torch.full_like(ent, math.inf))
        predictor.zero_grad()
        loss, _ = popo_loss(lp, mask[rows], weights[rows], predicted_features=predictor(feats[rows]),
                            target_features=target[rows], token_entropy=ent,
                            alpha=0.1, beta=0.01, noise_std=0.0)
        loss.backward()
        return loss.detach(), scale.grad.clone(), [p.grad.clone() for p in predictor.parameters()]

    loss_all, g_all, p_all = run(torch.arange(n), poison=True)
    loss_pos, g_pos, p_pos = run(pos.nonzero().squeeze(1), poison=False)
    torch.testing.assert_close(loss_pos, loss_all, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_pos, g_all, atol=1e-12, rtol=0)
    for a, b in zip(p_pos, p_all):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_micro_batch_sum_equals_full_batch():
    gen = torch.Generator().manual_seed(4)
    n, t, h = 9, 6, 3
    logp = -torch.rand(n, t, generator=gen, dtype=F64)
    mask = torch.rand(n, t, generator=gen) > 0.25
    w = popo_weights(-torch.rand(n, generator=gen, dtype=F64),
                     (torch.rand(n, generator=gen) > 0.4).to(F64), 3)
    pred, target = torch.randn(n, h, generator=gen, dtype=F64), torch.randn(n, h, generator=gen, dtype=F64)
    ent = torch.rand(n, t, generator=gen, dtype=F64)
    kw = dict(alpha=0.3, beta=0.05, noise_std=0.0)
    full, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        token_entropy=ent, **kw)
    n_plus = (mask & (w > 0).unsqueeze(1)).sum()
    w_sum = w.sum()
    total = 0.0
    for rows in (slice(0, 2), slice(2, 7), slice(7, 9)):
        part, _ = popo_loss(logp[rows], mask[rows], w[rows], predicted_features=pred[rows],
                            target_features=target[rows], token_entropy=ent[rows],
                            num_positive_tokens=n_plus, weight_sum=w_sum, **kw)
        total = total + part
    torch.testing.assert_close(total, full, atol=1e-12, rtol=0)


def _loop_reference(logp, mask, w, pred, target, ent, alpha, beta):
    n_plus = sum(int(mask[i].sum()) for i in range(len(w)) if w[i] > 0)
    w_tot = sum(float(w[i]) for i in range(len(w)) if w[i] > 0)
    nll = sim = ent_l = 0.0
    for i in range(len(w)):
        if w[i] <= 0:
            continue
        for j in range(logp.shape[1]):
            if mask[i, j]:
                nll += -float(w[i]) * float(logp[i, j]) / n_plus
                ent_l += -float(ent[i, j]) / n_plus
        p, q = pred[i].tolist(), target[i].tolist()
        dot = sum(a * b for a, b in zip(p, q))
        cos = dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in q)))
        sim += -float(w[i]) * cos / w_tot
    return nll + alpha * sim + beta * ent_l


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_reference_equivalence(seed):
    gen = torch.Generator().manual_seed(seed)
    b, g, t, h = 3, 4, 7, 5
    n = b * g
    logp = -3 * torch.rand(n, t, generator=gen, dtype=F64)
    mask = torch.rand(n, t, generator=gen) > 0.3
    rewards = (torch.rand(n, generator=gen) > 0.5).to(F64)
    if seed == 2:
        rewards[:] = 1.0  # all-positive batch
    w = popo_weights(logp.mean(1), rewards, g)
    pred, target = torch.randn(n, h, generator=gen, dtype=F64), torch.randn(n, h, generator=gen, dtype=F64)
    ent = torch.rand(n, t, generator=gen, dtype=F64)
    loss, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        token_entropy=ent, alpha=0.2, beta=0.03, noise_std=0.0)
    ref = _loop_reference(logp, mask, w, pred, target, ent, 0.2, 0.03)
    assert abs(loss.item() - ref) < 1e-12


def test_no_positive_batch_is_zero_with_zero_grads():
    logp, mask, _, pred, target, ent = hand_batch()
    logp.requires_grad_(True)
    ent.requires_grad_(True)
    torch.manual_seed(0)
    predictor = Predictor(2).double()
    feats = torch.nan_to_num(pred)
    w = torch.zeros(6, dtype=F64)
    loss, m = popo_loss(logp, mask, w, predicted_features=predictor(feats), target_features=target,
                        token_entropy=ent, noise_std=0.02,
                        target_noise=torch.randn(target.shape, dtype=F64, generator=torch.Generator().manual_seed(0)))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert m["num_positive"] == 0.0 and weight_entropy(w, w > 0, 3) == 0.0
    assert all(not math.isnan(v) for v in m.values())
    loss.backward()  # documented: connected to the graph, all-zero gradients
    for grad in [logp.grad, ent.grad] + [p.grad for p in predictor.parameters()]:
        assert grad is not None and (grad == 0).all()


def test_mask_invariance_within_positive_rows():
    logp, mask, w, pred, target, ent = hand_batch()
    base, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        token_entropy=ent, noise_std=0.0)
    for junk in (math.inf, -math.inf, 1e30):
        lp2 = torch.where(mask, logp, junk).requires_grad_(True)
        ent2 = torch.where(mask, ent, junk).requires_grad_(True)
        loss, m = popo_loss(lp2, mask, w, predicted_features=pred, target_features=target,
                            token_entropy=ent2, noise_std=0.0)
        assert loss.item() == base.item()
        loss.backward()
        assert torch.isfinite(lp2.grad).all() and (lp2.grad[~mask] == 0).all()
        assert torch.isfinite(ent2.grad).all()


def test_positive_mask_override():
    logp, mask, w, pred, target, ent = hand_batch()
    # Same positives given explicitly; weights of negatives may then be garbage.
    w_junk = torch.where(w > 0, w, torch.full_like(w, NAN))
    loss, _ = popo_loss(logp, mask, w_junk, predicted_features=pred, target_features=target,
                        token_entropy=ent, positive_mask=w > 0, noise_std=0.0)
    assert abs(loss.item() - TOTAL) < 1e-12


def test_stop_gradient_to_ema_target_and_predictor_gets_gradient():
    torch.manual_seed(0)
    online = torch.nn.Linear(4, 3).double()
    target_net = freeze_(torch.nn.Linear(4, 3).double())
    ema_update_(target_net, online, 0.0)
    predictor = Predictor(3, width=5).double()
    x = torch.randn(5, 4, dtype=F64)
    online_feats = online(x)
    target_feats = target_net(x).requires_grad_(True)  # even if it asks for grad
    logp = -torch.rand(5, 2, dtype=F64, requires_grad=True)
    loss, _ = popo_loss(logp, torch.ones(5, 2, dtype=torch.bool), torch.full((5,), 0.2, dtype=F64),
                        predicted_features=predictor(online_feats), target_features=target_feats,
                        noise_std=0.02, target_noise=torch.randn(5, 3, dtype=F64))
    loss.backward()
    assert target_feats.grad is None
    assert all(p.grad is None for p in target_net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())
    assert online.weight.grad is not None and online.weight.grad.abs().sum() > 0


def test_noise_is_the_callers_draw_scaled_by_noise_std():
    gen = torch.Generator().manual_seed(5)
    n, h = 4, 3
    pred = torch.randn(n, h, generator=gen, dtype=F64)
    target = torch.randn(n, h, generator=gen, dtype=F64)
    logp = torch.full((n, 2), -1.0, dtype=F64)
    mask = torch.ones(n, 2, dtype=torch.bool)
    w = torch.tensor([0.5, 0.5, 1.0, 0.0], dtype=F64)
    eps = torch.randn(n, h, generator=torch.Generator().manual_seed(7), dtype=F64)
    loss, m = popo_loss(logp, mask, w, predicted_features=pred, target_features=target,
                        alpha=1.0, beta=0.0, noise_std=0.5, target_noise=eps)
    cos = F.cosine_similarity(pred, target + 0.5 * eps, dim=-1)
    expected_sim = -(w * cos).sum() / 2.0
    assert abs(m["sim"] - expected_sim.item()) < 1e-12
    # nll: 3 positive rows x 2 tokens of -logp = 1 -> (0.5*2 + 0.5*2 + 1.0*2) / 6 = 2/3
    assert abs(loss.item() - (2 / 3 + expected_sim.item())) < 1e-12
    # the same draw, the same loss; another draw, another loss; no draw, no noise (popo.seeds keys the draw)
    again, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target, alpha=1.0,
                         beta=0.0, noise_std=0.5, target_noise=eps.clone())
    other, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target, alpha=1.0,
                         beta=0.0, noise_std=0.5, target_noise=torch.randn(n, h, dtype=F64))
    none, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target, alpha=1.0,
                        beta=0.0, noise_std=0.5)
    clean, _ = popo_loss(logp, mask, w, predicted_features=pred, target_features=target, alpha=1.0,
                         beta=0.0, noise_std=0.0, target_noise=eps)
    assert again.item() == loss.item() and other.item() != loss.item() and none.item() == clean.item()


def test_float32_inputs_and_validation():
    logp = -torch.rand(4, 3)
    mask = torch.ones(4, 3, dtype=torch.bool)
    loss, _ = popo_loss(logp, mask, torch.tensor([0.5, 0.5, 0.0, 1.0]))
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match="weights"):
        popo_loss(logp, mask, torch.ones(3))
    with pytest.raises(ValueError, match="completion_mask"):
        popo_loss(logp, mask[:, :2], torch.ones(4))
    with pytest.raises(ValueError, match="features"):
        popo_loss(logp, mask, torch.ones(4), predicted_features=torch.ones(4, 2),
                  target_features=torch.ones(3, 2))
