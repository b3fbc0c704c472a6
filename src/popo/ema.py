"""EMA target network and its momentum schedule (POPO's predictor head is `popo.predictor`).

EMA update
----------
For every matching pair of target tensor ``xi`` and online tensor ``theta``::

    xi <- tau * xi + (1 - tau) * theta  ==  xi.lerp_(theta, 1 - tau)

done in place under ``torch.no_grad`` (one ``torch._foreach_lerp_`` call when
all pairs share dtype and device, a per-tensor ``lerp_`` otherwise, with the
online tensor cast to the target's dtype/device).  ``tau = 1`` returns
without touching the target (bit-exact "frozen target", the popo-frozen
preset); ``tau = 0`` copies the online tensors exactly.

For ``nn.Module`` arguments the pairs are matched *by name* over
``named_parameters()`` plus the floating-point ``named_buffers()`` (e.g. a
norm's running statistics); a name present on one side only, or a shape
mismatch, raises ``ValueError``.  Non-floating buffers (counters such as
``num_batches_tracked``) are left alone.  Iterables of tensors are matched
by position and must have equal length.

Momentum schedule
-----------------
``constant``: ``tau_k = tau``.
``cosine`` (BYOL): ``tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2``, which is
``tau_0`` at ``k = 0``, ``(1 + tau_0) / 2`` at ``k = K/2`` and exactly 1 at
``k = K``.  ``k`` is clamped to ``[0, K]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

EMA_SCHEDULES = ("constant", "cosine")


def _named_state(module: nn.Module) -> dict[str, Tensor]:
    state = {name: p for name, p in module.named_parameters()}
    for name, b in module.named_buffers():
        if b.is_floating_point():
            state[name] = b
    return state


def matched_tensors(target, online) -> tuple[list[Tensor], list[Tensor]]:
    """The (target, online) tensor pairs `ema_update_` works on, matched by name (modules) or position;
    ValueError on a name, count or shape mismatch."""
    if isinstance(target, nn.Module) != isinstance(online, nn.Module):
        raise ValueError("target and online must both be nn.Modules or both iterables of tensors")
    if isinstance(target, nn.Module):
        t_state, o_state = _named_state(target), _named_state(online)
        if t_state.keys() != o_state.keys():
            only_t = sorted(t_state.keys() - o_state.keys())
            only_o = sorted(o_state.keys() - t_state.keys())
            raise ValueError(
                f"EMA name mismatch: only in target {only_t[:5]}, only in online {only_o[:5]}"
            )
        names = list(t_state)
        targets = [t_state[k] for k in names]
        onlines = [o_state[k] for k in names]
    else:
        targets, onlines = list(target), list(online)
        if len(targets) != len(onlines):
            raise ValueError(f"EMA got {len(targets)} target and {len(onlines)} online tensors")
        names = [str(i) for i in range(len(targets))]
    for name, t, o in zip(names, targets, onlines):
        if t.shape != o.shape:
            raise ValueError(f"EMA shape mismatch at {name}: {tuple(t.shape)} vs {tuple(o.shape)}")
    return targets, onlines


@torch.no_grad()
def ema_update_(
    target: nn.Module | Iterable[Tensor],
    online: nn.Module | Iterable[Tensor],
    tau: float,
) -> None:
    """In place ``target <- tau * target + (1 - tau) * online``."""
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    targets, onlines = matched_tensors(target, online)
    if tau == 1.0 or not targets:
        return
    if tau == 0.0:
        for t, o in zip(targets, onlines):
            t.copy_(o)
        return
    weight = 1.0 - tau
    same = all(t.dtype == o.dtype and t.device == o.device for t, o in zip(targets, onlines))
    if same:
        torch._foreach_lerp_(targets, onlines, weight)
    else:
        for t, o in zip(targets, onlines):
            t.lerp_(o.to(device=t.device, dtype=t.dtype), weight)


def ema_tau(step: int, total_steps: int, tau: float, schedule: str = "constant") -> float:
    """EMA momentum at optimisation step ``step`` of ``total_steps``."""
    if schedule == "constant":
        return float(tau)
    if schedule == "cosine":
        if total_steps <= 0:
            raise ValueError(f"cosine schedule needs total_steps > 0, got {total_steps}")
        k = min(max(step, 0), total_steps)
        if k == total_steps:
            return 1.0
        return 1.0 - (1.0 - tau) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0
    raise ValueError(f"unknown EMA schedule {schedule!r}; valid: {EMA_SCHEDULES}")


def ema_step_(pairs: tuple[list[Tensor], list[Tensor]], *, step: int, total_steps: int, cfg) -> float:
    """POPO's EMA step after an optimizer step, the one every framework runs (popo's trainer, TRL, verl): tau
    from the schedule at `step` of `total_steps` (`ema_tau` with ``cfg.tau`` and ``cfg.tau_schedule``), then
    `ema_update_` over the matched (target, online) tensors `pairs`. Returns tau."""
    tau = ema_tau(step, total_steps, cfg.tau, cfg.tau_schedule)
    ema_update_(*pairs, tau)
    return tau


def freeze_(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter and put the module in eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module

