"""Tests for popo.predictor: the predictor head's layers and argument checks."""

import pytest
import torch
from torch import nn

from popo.predictor import Predictor


@pytest.mark.parametrize("num_layers,width,expected", [
    (1, None, [nn.Linear]),
    (2, None, [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]),
    (3, 7, [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]),
])
def test_predictor_structure(num_layers, width, expected):
    p = Predictor(4, width=width, num_layers=num_layers)
    assert [type(m) for m in p.net] == expected
    linears = [m for m in p.net if isinstance(m, nn.Linear)]
    w = 4 if width is None else width
    assert linears[0].in_features == 4 and linears[-1].out_features == 4
    assert all(lin.out_features == w for lin in linears[:-1])
    x = torch.randn(3, 4, requires_grad=True)
    y = p(x)
    assert y.shape == (3, 4)
    y.sum().backward()
    assert all(q.grad is not None for q in p.parameters()) and x.grad is not None


def test_predictor_validation():
    with pytest.raises(ValueError, match="num_layers"):
        Predictor(4, num_layers=0)
    with pytest.raises(ValueError, match="width"):
        Predictor(4, width=0)
