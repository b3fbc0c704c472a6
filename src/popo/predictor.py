"""POPO's predictor head ``q_phi``: the small MLP that maps the policy's pooled features onto the EMA
target's (the similarity term of `popo.losses.popo_loss` compares the two).

Shape
-----
``(Linear -> LayerNorm -> ReLU) x (num_layers - 1) -> Linear`` mapping
``dim -> width -> ... -> width -> dim``; ``num_layers = 1`` is a single
``Linear(dim, dim)``.  The paper's 7B run uses a width of 4096; the default
width here is ``dim`` so small models get a proportionate head.
"""

from __future__ import annotations

from torch import Tensor, nn


class Predictor(nn.Module):
    """MLP head q_phi: dim -> width -> ... -> dim (see module docstring)."""

    def __init__(self, dim: int, width: int | None = None, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        width = dim if width is None else width
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        layers: list[nn.Module] = []
        d_in = dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(d_in, width), nn.LayerNorm(width), nn.ReLU()]
            d_in = width
        layers.append(nn.Linear(d_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # [..., dim]
