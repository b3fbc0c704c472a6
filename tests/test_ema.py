"""Tests for popo.ema: EMA updates, momentum schedules, freeze_."""

import math

import pytest
import torch
from torch import nn

from popo.ema import ema_tau, ema_update_, freeze_

F64 = torch.float64


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        self.norm = nn.BatchNorm1d(2).double()  # floating buffers + an integer counter


def _fill(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)
        module.norm.running_mean.fill_(value)
        module.norm.num_batches_tracked.fill_(int(value))


def test_two_updates_exact_values_modules():
    target, online = Tiny(), Tiny()
    _fill(target, 2.0)
    _fill(online, 6.0)
    ema_update_(target, online, 0.75)
    # 0.75 * 2 + 0.25 * 6 = 1.5 + 1.5 = 3.0
    assert (target.lin.weight == 3.0).all() and (target.norm.running_mean == 3.0).all()
    _fill(online, -2.0)
    ema_update_(target, online, 0.75)
    # 0.75 * 3 + 0.25 * (-2) = 2.25 - 0.5 = 1.75
    for t in list(target.parameters()) + [target.norm.running_mean]:
        assert (t == 1.75).all()
    assert target.norm.num_batches_tracked.item() == 2  # integer buffers untouched
    assert online.lin.weight.eq(-2.0).all()             # online never modified


def test_two_updates_exact_values_tensor_lists():
    target = [torch.tensor([0.0, 4.0], dtype=F64), torch.tensor([[8.0]], dtype=F64)]
    online = [torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([[0.0]], dtype=F64)]
    ema_update_(target, online, 0.5)
    # 0.5 * (0, 4) + 0.5 * (1, 0) = (0.5, 2);  0.5 * 8 = 4
    ema_update_(target, online, 0.5)
    # 0.5 * (0.5, 2) + 0.5 * (1, 0) = (0.75, 1);  0.5 * 4 = 2
    torch.testing.assert_close(target[0], torch.tensor([0.75, 1.0], dtype=F64), atol=0, rtol=0)
    torch.testing.assert_close(target[1], torch.tensor([[2.0]], dtype=F64), atol=0, rtol=0)


def test_tau_edge_cases_are_exact():
    torch.manual_seed(0)
    online = nn.Linear(5, 4)
    target = nn.Linear(5, 4)
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 1.0)
    for b, p in zip(before, target.parameters()):
        assert torch.equal(b, p)
    ema_update_(target, online, 0.0)
    for o, p in zip(online.parameters(), target.parameters()):
        assert torch.equal(o, p)


def test_mixed_dtype_and_no_grad():
    target = [torch.zeros(3, dtype=F64)]
    online = [torch.ones(3, dtype=torch.float32, requires_grad=True)]
    ema_update_(target, online, 0.9)
    # 0.9 * 0 + 0.1 * 1 = 0.1 (in float64)
    torch.testing.assert_close(target[0], torch.full((3,), 0.1, dtype=F64), atol=1e-15, rtol=0)
    assert not target[0].requires_grad
    params = [nn.Parameter(torch.zeros(2))]
    ema_update_(params, [torch.ones(2)], 0.5)  # in-place on a leaf that requires grad is fine
    assert params[0].grad_fn is None and (params[0] == 0.5).all()


def test_ema_validation():
    with pytest.raises(ValueError, match="name"):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update_(nn.Linear(2, 2), nn.Linear(2, 3), 0.5)
    with pytest.raises(ValueError, match="1 target and 2 online"):
        ema_update_([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], 0.5)
    with pytest.raises(ValueError, match="tau"):
        ema_update_([torch.zeros(1)], [torch.zeros(1)], 1.5)
    with pytest.raises(ValueError, match="both"):
        ema_update_(nn.Linear(1, 1), [torch.zeros(1)], 0.5)


def test_ema_tau_schedules():
    assert ema_tau(0, 100, 0.995) == 0.995
    assert ema_tau(57, 100, 0.995, "constant") == 0.995
    # cosine: tau_k = 1 - (1 - tau0) (cos(pi k / K) + 1) / 2
    assert abs(ema_tau(0, 100, 0.99, "cosine") - 0.99) < 1e-15           # cos 0 = 1 -> tau0
    assert ema_tau(100, 100, 0.99, "cosine") == 1.0                      # cos pi = -1 -> 1
    assert abs(ema_tau(50, 100, 0.99, "cosine") - 0.995) < 1e-15         # cos pi/2 = 0 -> (1+tau0)/2
    quarter = 1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2                 # 0.99146446...
    assert abs(ema_tau(25, 100, 0.99, "cosine") - quarter) < 1e-15
    assert ema_tau(150, 100, 0.99, "cosine") == 1.0                      # clamped past the end
    with pytest.raises(ValueError, match="constant.*cosine"):
        ema_tau(0, 10, 0.99, "linear")
    with pytest.raises(ValueError, match="total_steps"):
        ema_tau(0, 0, 0.99, "cosine")


def test_freeze():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    out = freeze_(m)
    assert out is m and not m.training
    assert all(not p.requires_grad for p in m.parameters())
