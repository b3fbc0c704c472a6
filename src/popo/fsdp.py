"""Fully sharded data parallel training (PyTorch FSDP2, `fully_shard`), configured by `accelerate`.

When `accelerate launch` runs with an FSDP config (`configs/accelerate/fsdp-*.yaml`, `fsdp_version: 2`),
the policy, the EMA target and the frozen reference are each sharded the same way: one FSDP unit per
decoder layer (`fsdp_transformer_layer_cls_to_wrap`, default the model's `_no_split_modules`) and one
root unit for the rest (embeddings, final norm, LM head, tied or not). Each rank keeps 1/N of every
weight, gradient and optimizer state; the predictor head is small and stays replicated.

What the rest of popo relies on (and `tests/test_fsdp.py` checks against one process):

- gradients are *summed* over ranks (`set_gradient_divide_factor(1)`), as in `popo.distributed`: each
  rank's loss is its share of the global loss;
- every rank runs the same number of forward/backward passes, because each one all-gathers weights:
  a rank with fewer (or no) micro-batches runs `idle_pass`es (a one-token forward whose loss is
  multiplied by zero), so nothing hangs when a rank has no positive rollout;
- `completion_outputs` enters through the root unit (`completion_entry`, a method registered with
  `register_fsdp_forward_method`), so the root's weights are gathered for the LM head calls it makes
  outside `forward`;
- generation runs inside `gathered(model)`: every unit is all-gathered once and kept, so the decode
  loop itself needs no collective and ranks may stop after different numbers of tokens;
- the EMA target is updated shard by shard on the local tensors (`local_tensors`), never gathered;
- checkpoints hold full (unsharded) tensors, gathered one at a time, so a checkpoint written by N
  sharded processes is an ordinary one: it resumes in any number of processes, with or without FSDP.

DeepSpeed is refused with a message pointing at the FSDP configs (ZeRO-3 ~ `fsdp_reshard_after_forward:
true`, ZeRO-2 ~ `false`): popo runs its own update loop and does not drive a DeepSpeed engine.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

COMPLETION_METHOD = "popo_completion"
"""The method `shard_` adds to a sharded model's root unit: `popo.logprobs.completion_forward` run through it."""


@dataclass(frozen=True)
class ShardingPlan:
    """How to shard: read from the environment `accelerate launch` sets up from its config file."""

    reshard_after_forward: bool = True  # ZeRO-3 style; False keeps gathered weights until backward (ZeRO-2 style)
    param_dtype: torch.dtype | None = None  # compute dtype with mixed precision (bf16); weights stay fp32
    offload_params: bool = False  # keep the policy's shards in CPU memory (FSDP2 CPUOffloadPolicy)
    layer_classes: tuple[str, ...] = ()  # module classes that get their own unit; () = model._no_split_modules


def plan_from_environment(env: dict[str, str] | None = None) -> ShardingPlan | None:
    """The sharding plan of this launch, or None without FSDP. Raises ValueError for a DeepSpeed launch,
    FSDP version 1, or an auto-wrap policy other than transformer-based / none."""
    env = dict(os.environ if env is None else env)
    flag = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower()
    if flag in ("1", "true", "yes"):
        raise ValueError("DeepSpeed launches are not supported: popo runs its own update loop. Use "
                         "configs/accelerate/fsdp-1node-8gpu.yaml (the ZeRO-3 equivalent: shards weights, gradients "
                         "and optimizer state) or fsdp-zero2-1node-8gpu.yaml (the ZeRO-2 equivalent: keeps "
                         "weights gathered from forward to backward) instead")
    if env.get("ACCELERATE_USE_FSDP", "false").lower() not in ("1", "true", "yes"):
        return None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(f"fsdp_version {version} is not supported: set `fsdp_version: 2` in the accelerate "
                         "config (popo shards with PyTorch's fully_shard)")
    wrap = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").upper()
    if wrap not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise ValueError(f"fsdp_auto_wrap_policy {wrap} is not supported: use TRANSFORMER_BASED_WRAP")
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() in ("1", "true", "yes"):
        raise ValueError("fsdp_activation_checkpointing is not used by popo: set it to false and use "
                         "model.gradient_checkpointing=true instead")
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision {precision!r} is not supported with FSDP: use bf16 or no")
    classes = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "") if wrap == "TRANSFORMER_BASED_WRAP" else ""
    return ShardingPlan(
        reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in ("1", "true", "yes"),
        param_dtype={"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision],
        offload_params=env.get("FSDP_OFFLOAD_PARAMS", "false").lower() in ("1", "true", "yes"),
        layer_classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
    )


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_(model: nn.Module, plan: ShardingPlan, *, offload: bool | None = None) -> nn.Module:
    """Shard `model` in place (one unit per layer of `plan.layer_classes`, then the root) and return it.
    `offload` overrides `plan.offload_params` (the target and reference use `model.offload_companions`)."""
    from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard,
                                        register_fsdp_forward_method)

    names = set(plan.layer_classes or getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"FSDP: no module of class {sorted(names)} in {type(model).__name__}; set "
                         "fsdp_transformer_layer_cls_to_wrap to its decoder layer class")
    if plan.param_dtype is not None:  # fp32 master weights, compute in param_dtype
        for p in model.parameters():
            p.data = p.data.float()
    mixed = MixedPrecisionPolicy(param_dtype=plan.param_dtype,
                                 reduce_dtype=torch.float32 if plan.param_dtype is not None else None)
    off = plan.offload_params if offload is None else offload
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if off else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, reshard_after_forward=plan.reshard_after_forward, mp_policy=mixed,
                    offload_policy=policy)
    fully_shard(model, mp_policy=mixed, offload_policy=policy)  # root: keeps its weights until backward
    for unit in [*layers, model]:  # sum over ranks (each rank's loss is its share of the total), with a
        unit.set_gradient_divide_factor(1.0)  # plain SUM reduce-scatter (gloo has no pre-scaled sum)
        unit.set_force_sum_reduction_for_comms(True)
    from popo.logprobs import completion_forward

    setattr(model, COMPLETION_METHOD, types.MethodType(completion_forward, model))
    register_fsdp_forward_method(model, COMPLETION_METHOD)
    return model


def completion_entry(model) -> Callable | None:
    """The `entry` for `popo.logprobs.completion_outputs` of `model`: for a sharded model the method
    `shard_` registered on its root unit, so the root's weights are gathered for the LM head calls made
    outside `forward`; None for any other model (called directly)."""
    method = getattr(model, COMPLETION_METHOD, None)
    if method is None:
        return None

    def run(*args):
        with warnings.catch_warnings():  # the features are a view of the hidden states, never changed in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            return method(*args)

    return run


@contextmanager
def gathered(model, plan: ShardingPlan | None) -> Iterator[None]:
    """All-gather every unit of a sharded `model` for the block and keep it gathered across forwards
    (generation: no collective per decoded token); shards again on exit. No-op when not sharded."""
    if plan is None or not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    inner = [m for m in units if m is not model]
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for unit in inner:
            unit.set_reshard_after_forward(plan.reshard_after_forward, recurse=False)


def reshard_all(model) -> None:
    """Free the gathered weights of every unit of a sharded `model` (a root unit keeps its weights after a
    forward until the backward; a forward without backward, as for the target, must let them go)."""
    if not is_sharded(model):
        return
    from torch.distributed.fsdp import FSDPModule

    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def idle_pass(model: nn.Module, device: torch.device, *, backward: bool) -> None:
    """A one-token forward (and backward of zero) that joins the all-gathers and reduce-scatters of a
    real micro-batch, for a rank that has run out of rows; it adds exactly zero to every gradient."""
    from popo.logprobs import completion_outputs

    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    with torch.set_grad_enabled(backward):
        out = completion_outputs(model, ids, torch.ones_like(ids), 1, need_features=True,
                                 entry=completion_entry(model))
        if backward:
            (out.logprobs.sum() * 0.0 + out.features.float().sum() * 0.0).backward()


def shard_fraction(modules: Sequence[nn.Module | None]) -> tuple[int, int]:
    """(elements this rank holds, elements of the full tensors) over the parameters of `modules`."""
    params = [p for module in modules if module is not None for p in module.parameters()]
    return sum(local(p).numel() for p in params), sum(p.numel() for p in params)


# ---------------------------------------------------------------------- tensors of sharded modules
def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(t) -> bool:
    return isinstance(t, _dtensor())


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of `t` (`t` itself when it is not sharded); in-place updates of the result
    update `t`."""
    return t.to_local() if is_dtensor(t) else t


def local_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [local(t) for t in tensors]


def ema_pairs(target: nn.Module, online: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching local shards of two identically sharded modules, for `ema_update_`."""
    from popo.ema import matched_tensors

    reshard_all(target)
    reshard_all(online)
    targets, onlines = matched_tensors(target, online)  # by name; DTensor shapes are the full ones
    return local_tensors(targets), local_tensors(onlines)


def full_state_dict(module: nn.Module, *, keep: bool) -> dict[str, torch.Tensor]:
    """The module's state dict with every sharded tensor gathered to a full CPU tensor, one at a time.
    A collective: every rank calls it in the same order; only ranks with `keep` hold the result."""
    out = {}
    reshard_all(module)
    first: dict[int, str] = {}  # tied weights (embeddings = LM head) are one parameter: gather it once
    alias = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        alias[name] = first.setdefault(id(p), name)
    for name, t in module.state_dict().items():
        if alias.get(name, name) != name:
            if keep:
                out[name] = out[alias[name]]
            continue
        full = t.full_tensor() if is_dtensor(t) else t
        if keep:
            out[name] = full.detach().to("cpu", copy=True)
        del full
    return out


def load_full_state_dict_(module: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = False
                          ) -> tuple[list[str], list[str]]:
    """Copy full tensors into a sharded module: each rank keeps its own slice (no collective, every rank
    reads the file). Returns (missing, unexpected) names like `load_state_dict`."""
    reshard_all(module)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise KeyError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, t in own.items():
            if name in state:
                mine = local(t)
                mine.copy_(shard_of(state[name], t).to(mine.dtype))
    return missing, unexpected


def shard_of(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The slice of `full` that this rank holds of the (possibly sharded) tensor `like`."""
    if not is_dtensor(like):
        return full.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()


def gathered_optimizer_state(optimizer: torch.optim.Optimizer, *, keep: bool) -> dict:
    """`optimizer.state_dict()` with sharded state tensors gathered in full (a collective)."""
    state = optimizer.state_dict()  # its per-parameter dicts are the live ones: build new ones
    state["state"] = {index: {key: _gather(value, keep) if is_dtensor(value) else value
                              for key, value in slot.items()}
                      for index, slot in state["state"].items()}
    return state


def _gather(value, keep: bool):
    full = value.full_tensor()
    return full.cpu() if keep else None


def scatter_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A full optimizer state dict (from `gathered_optimizer_state`, any number of processes) with each
    tensor of a sharded parameter cut to this rank's shard, ready for `optimizer.load_state_dict`."""
    DTensor = _dtensor()
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def cut(value, param):
        if not (isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape):
            return value  # a replicated parameter's state, or a scalar such as `step`
        return DTensor.from_local(shard_of(value, param), param.device_mesh, param.placements, run_check=False,
                                  shape=param.shape, stride=param.stride())

    state = {**state, "state": {index: {key: cut(value, params[int(index)]) for key, value in slot.items()}
                                for index, slot in state["state"].items()}}
    return state


# ---------------------------------------------------------------------- gradients
def clip_gradients_(params: Sequence[nn.Parameter], max_norm: float, sum_over_ranks) -> torch.Tensor:
    """`clip_grad_norm_` for a mix of sharded and replicated parameters: the squared norms of the local
    shards are summed over ranks (`sum_over_ranks`, in place), the replicated ones counted once. Returns
    the total norm (before clipping) and scales every gradient by min(1, max_norm / (norm + 1e-6))."""
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    shard_sq = torch.zeros((), dtype=torch.float64, device=device)
    plain_sq = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        if is_dtensor(g):
            shard_sq += local(g).double().pow(2).sum().to(device)
        else:
            plain_sq += g.double().pow(2).sum().to(device)
    total = (sum_over_ranks(shard_sq) + plain_sq).sqrt().float()
    if torch.isfinite(total) and max_norm < float("inf"):
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in map(local, grads):
            g.mul_(coef.to(g.device, g.dtype))
    return total
