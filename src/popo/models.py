"""The models of one run, and where they live.

`Models` owns the policy and the companions the loss table asks for: the EMA target and its predictor
(POPO's similarity term) and the frozen reference (GRPO's KL penalty). It is the one place that knows how
they are placed, so the update and the trainer never branch on it:

- **LoRA** (`popo.lora`): the target is an EMA of the adapter tensors swapped into the policy for its
  forward pass, the reference is the policy with its adapters disabled; no model copies.
- **FSDP2** (`popo.fsdp`): every forward of a sharded model is a collective, so micro-batches run in
  lockstep over ranks (`rounds`, `idle_pass`), generation runs on gathered weights (`gathered`), the EMA
  step works on local shards, and checkpoints gather full tensors (`snapshot`) and cut them again on load.
- **CPU offload** (`model.offload_companions`): the target and the reference sit in CPU memory and come
  to the device for the update only (`placed_for_update`).

What the update asks for: no-grad log-probs of the policy and the reference (`policy_logprobs`,
`reference_logprobs`), pooled target features (`target_features`), the policy's outputs with gradient
(`online_outputs`) and the predictor's projection (`predict`); then it tells the models to reduce and
clip the gradients and, after the optimizer step, the trainer moves the EMA target over `ema_pairs`
(`popo.ema.ema_step_`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from popo import companions, fsdp
from popo.distributed import Dist
from popo.ema import freeze_, matched_tensors
from popo.errors import SetupError
from popo.lora import AdapterEMA, AdapterOff, companion, is_peft, load_policy_weights
from popo.logprobs import CompletionOutputs, completion_outputs, masked_mean
from popo.losses import kl_penalty
from popo.predictor import Predictor
from popo.rollout.base import Rollouts, plan_micro_batches


@dataclass
class Models:
    """The policy and the optional companions an algorithm asks for, with their placement."""

    policy: nn.Module
    target: nn.Module | AdapterEMA | None = None  # EMA copy of the policy (POPO's similarity term)
    predictor: nn.Module | None = None  # q_phi, trained with the policy
    reference: nn.Module | AdapterOff | None = None  # frozen reference (GRPO's KL penalty)
    sharding: fsdp.ShardingPlan | None = None  # FSDP2 plan when the run is sharded
    offload_companions: bool = False  # target and reference in CPU memory between updates
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, policy: nn.Module, *, with_target: bool, with_reference: bool, predictor_width: int,
              predictor_layers: int, device: torch.device, sharding: fsdp.ShardingPlan | None = None,
              offload_companions: bool = False) -> "Models":
        """The policy (on `device`, or in CPU memory to be sharded) and the companions asked for. With
        LoRA the EMA target is an EMA of the adapter tensors and the reference is the policy with
        adapters disabled; otherwise each is a frozen copy of the policy."""
        models = cls(policy=policy.train(), sharding=sharding, offload_companions=offload_companions, device=device)
        lora = is_peft(policy)
        if with_target:
            hidden = policy.config.hidden_size
            models.target = AdapterEMA(policy) if lora else _frozen_copy(policy)
            models.predictor = Predictor(hidden, predictor_width or hidden, predictor_layers).to(device, policy.dtype)
        if with_reference:
            models.reference = AdapterOff(policy) if lora else _frozen_copy(policy)
        if offload_companions:
            for other in (models.target, models.reference):
                if other is not None:
                    other.to("cpu")
        if sharding is not None:
            models._shard()
        return models

    def _shard(self) -> None:
        if is_peft(self.policy):
            raise SetupError("model.lora with FSDP is not supported: LoRA adapters are small, launch with a DDP "
                             "config (configs/accelerate/ddp-*.yaml) instead")
        plan = self.sharding
        fsdp.shard_(self.policy, plan)
        for other in (self.target, self.reference):
            if other is not None:
                fsdp.shard_(other, plan, offload=self.offload_companions or plan.offload_params)

    @property
    def sharded(self) -> bool:
        return fsdp.is_sharded(self.policy)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates: the policy's (with LoRA, its adapters) then the predictor's."""
        return [p for group in self.trainable_groups() for p in group]

    def trainable_groups(self) -> list[list[nn.Parameter]]:
        """`trainable_parameters` as the policy's and the predictor's (when there is one) lists."""
        return [[p for p in m.parameters() if p.requires_grad] for m in (self.policy, self.predictor) if m is not None]

    def make_identical_(self, dist: Dist) -> None:
        """Give every rank rank 0's replicated tensors (at start-up); sharded models keep their own slices
        of the same files."""
        replicated = (self.predictor,) if self.sharded else (self.policy, self.predictor, self.target)
        dist.broadcast_([p for m in replicated if m is not None for p in m.parameters()])

    def describe_sharding(self, dist: Dist) -> str | None:
        """A line saying how much of the models this rank holds (None when not sharded)."""
        if not self.sharded:
            return None
        local, full = fsdp.shard_fraction([self.policy, self.target, self.reference])
        return (f"fsdp: rank {dist.rank} holds {local / 1e6:.2f} M of {full / 1e6:.2f} M model parameters "
                f"({local / full:.1%}; policy, EMA target and reference)")

    # ------------------------------------------------------------------ placement
    @contextmanager
    def gathered(self) -> Iterator[None]:
        """The policy's full weights for the block (generation, weight pushes): gathered once when sharded,
        so decoding needs no collective per token."""
        with fsdp.gathered(self.policy, self.sharding):
            yield

    @contextmanager
    def placed_for_update(self) -> Iterator[None]:
        """With `offload_companions`, the target and the reference on the device for the block and back in
        CPU memory after it (sharded companions are offloaded by FSDP itself)."""
        moved = ([m for m in (self.target, self.reference) if m is not None and not fsdp.is_sharded(m)]
                 if self.offload_companions else [])
        for m in moved:
            m.to(self.device)
        try:
            yield
        finally:
            for m in moved:
                m.to("cpu")

    # ------------------------------------------------------------------ forward passes the update asks for
    def rounds(self, plans: list[torch.Tensor], dist: Dist | None) -> list[torch.Tensor | None]:
        """The micro-batches padded with `None` (an idle pass) to the largest count over ranks when the
        policy is sharded: every forward of a sharded model is a collective, so all ranks run as many."""
        return _lockstep(plans, self.policy, dist)

    def lockstep_metrics(self, rounds: list, plans: list, dist: Dist) -> dict[str, float]:
        """`idle_passes`: the lockstep padding over all ranks (sharded runs only; a collective there)."""
        if not self.sharded:
            return {}
        return {"idle_passes": dist.sum_values([len(rounds) - len(plans)])[0]}

    def idle_pass(self) -> None:
        """Join the other ranks' collectives of one micro-batch, adding exactly zero to every gradient."""
        if self.target is not None:
            with companion(self.target) as target:
                fsdp.idle_pass(target, self.device, backward=False)
        fsdp.idle_pass(self.policy, self.device, backward=True)

    def policy_logprobs(self, batch: Rollouts, token_budget: int, dist: Dist | None = None) -> torch.Tensor:
        """Per-token log-probs [n, C] of the batch under the policy, no gradient."""
        return sequence_logprobs(self.policy, batch, token_budget, dist)

    def reference_logprobs(self, batch: Rollouts, token_budget: int, dist: Dist | None = None) -> torch.Tensor:
        """Per-token log-probs [n, C] of the batch under the frozen reference."""
        with companion(self.reference) as reference:
            return sequence_logprobs(reference, batch, token_budget, dist)

    def target_features(self, ids: torch.Tensor, attention: torch.Tensor, prompt_length: int,
                        mask: torch.Tensor) -> torch.Tensor:
        """Completion-pooled hidden features [n, H] of the EMA target, no gradient. Call it before the
        policy's forward: a LoRA target swaps adapter tensors in and out of the policy."""
        with torch.no_grad(), companion(self.target) as target:
            return masked_mean(completion_outputs(target, ids, attention, prompt_length, need_logprobs=False,
                                                  need_features=True, entry=fsdp.completion_entry(target)).features,
                               mask)

    def online_outputs(self, ids: torch.Tensor, attention: torch.Tensor, prompt_length: int, *,
                       entropy_grad: bool) -> CompletionOutputs:
        """The policy's log-probs and entropy (and, with a target, its features), with gradient."""
        return completion_outputs(self.policy, ids, attention, prompt_length, need_entropy=True,
                                  need_features=self.target is not None, entropy_grad=entropy_grad,
                                  entry=fsdp.completion_entry(self.policy))

    def predict(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The predictor's projection [n, H] of the completion-pooled online features."""
        pooled = masked_mean(features, mask)
        return self.predictor(pooled.to(next(self.predictor.parameters()).dtype))

    def forwards_done(self) -> None:
        """Free the target's gathered weights after its last forward of the update (no backward follows)."""
        if self.target is not None:
            fsdp.reshard_all(self.target)

    @torch.no_grad()
    def target_kl(self, batch: Rollouts, token_budget: int, dist: Dist | None = None) -> float:
        """Monitoring only: k3 estimate of KL(policy || target) per completion token (0 when empty)."""
        online = sequence_logprobs(self.policy, batch, token_budget, dist)
        with companion(self.target) as model:
            frozen = sequence_logprobs(model, batch, token_budget, dist)
        kl = kl_penalty(online, frozen, "k3")
        return float(torch.where(batch.completion_mask, kl, 0.0).sum() / batch.completion_mask.sum().clamp(min=1))

    # ------------------------------------------------------------------ gradients and the EMA step
    def gradients_are_whole(self) -> bool:
        """Whether a gradient over `trainable_parameters()` (e.g. from `torch.autograd.grad`) holds whole
        tensors on this rank, so flat gradients can be concatenated and compared; False when sharded
        (each rank holds slices)."""
        return not self.sharded

    def reduce_gradients_(self, params: list[nn.Parameter], dist: Dist) -> None:
        """Sum the replicated gradients over ranks (FSDP already reduce-scattered the sharded ones), so
        every rank holds (its shard of) the one-process gradient."""
        dist.sum_grads([p for p in params if not fsdp.is_dtensor(p)])

    def clip_gradients_(self, params: list[nn.Parameter], max_norm: float, dist: Dist) -> torch.Tensor:
        """Clip the global gradient norm to `max_norm`; returns the norm before clipping."""
        if self.sharded:
            return fsdp.clip_gradients_(params, max_norm, dist.sum_)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The (target, online) tensors the EMA step moves, matched: the adapter tensors with LoRA, the local
        shards with FSDP (never gathered), every floating tensor by name otherwise; `popo.ema.ema_step_` moves
        them (a caller may match them once and keep them: the TRL bridge does)."""
        if isinstance(self.target, AdapterEMA):
            return self.target.shadow, self.target.online()
        if self.sharded:
            return fsdp.ema_pairs(self.target, self.policy)
        return matched_tensors(self.target, self.policy)

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self, optimizer: torch.optim.Optimizer, *, keep: bool) -> "Snapshot":
        """What a checkpoint stores of the models and the optimizer, as full tensors. A collective when
        sharded (every rank calls it; only ranks with `keep` hold the gathered tensors)."""
        if not self.sharded:
            return Snapshot(self.policy, self.target, self.predictor, optimizer.state_dict())
        return Snapshot(self.policy, self.target, self.predictor,
                        fsdp.gathered_optimizer_state(optimizer, keep=keep),
                        policy_state=fsdp.full_state_dict(self.policy, keep=keep),
                        target_state=fsdp.full_state_dict(self.target, keep=keep) if self.target is not None else None)

    def load(self, folder: Path) -> None:
        """Load the policy, target and predictor of a checkpoint folder (full tensors, cut to this rank's
        shards when sharded); SetupError when the files do not match the models. A checkpoint written before
        the companions moved to `popo/` (``target/``, ``predictor.safetensors``) loads too."""
        _load_weights(self.policy, folder / "policy")
        if (folder / companions.FOLDER).is_dir():
            self.restore_companions(companions.read(folder / companions.FOLDER, target=self.target is not None,
                                                 predictor=self.predictor is not None), folder)
            return
        if self.target is not None:
            _load_weights(self.target, folder / "target")
        if self.predictor is not None:
            self.predictor.load_state_dict(load_file(folder / "predictor.safetensors"))

    def saved_companions(self) -> companions.Companions:
        """The target's and the predictor's tensors as a checkpoint stores them (`popo.companions`; not sharded:
        `snapshot` gathers sharded ones)."""
        return companions.Companions(target=None if self.target is None else _tensors(self.target),
                                     predictor=None if self.predictor is None else _tensors(self.predictor))

    def restore_companions(self, saved: companions.Companions, where: Path) -> None:
        """Restore the target and the predictor from `saved` (read from `where`, named in errors)."""
        if self.target is not None:
            _load_state(self.target, saved.target, where)
        if self.predictor is not None:
            self.predictor.load_state_dict(saved.predictor)

    def optimizer_state_for_run(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        """A saved (full) optimizer state made loadable here: cut to this rank's shards when sharded."""
        return fsdp.scatter_optimizer_state(optimizer, state) if self.sharded else state


@dataclass
class Snapshot:
    """The models' part of a checkpoint, ready to write; `*_state` replace the modules' own state dicts
    (the full tensors of sharded modules)."""

    policy: nn.Module
    target: nn.Module | AdapterEMA | None
    predictor: nn.Module | None
    optimizer_state: dict
    policy_state: dict | None = None
    target_state: dict | None = None

    def write(self, folder: Path, tokenizer) -> None:
        """policy/ (weights or LoRA adapter, and the tokenizer) and popo/ (the target and the predictor,
        `popo.companions`; the predictor's AdamW state is in the optimizer's)."""
        self.policy.save_pretrained(folder / "policy", **_state_kwarg(self.policy_state))
        tokenizer.save_pretrained(folder / "policy")
        target = self.target_state
        if target is None and self.target is not None:
            target = _tensors(self.target)
        companions.write(folder / companions.FOLDER, companions.Companions(
            target=target, predictor=None if self.predictor is None else _tensors(self.predictor)))


def _state_kwarg(state: dict | None) -> dict:
    return {} if state is None else {"state_dict": state}


def _tensors(part: nn.Module | AdapterEMA) -> dict[str, torch.Tensor]:
    """A part's tensors by name: with LoRA the target's adapter tensors, otherwise the module's state dict."""
    return dict(zip(part.names, part.shadow)) if isinstance(part, AdapterEMA) else part.state_dict()


def _frozen_copy(model: nn.Module) -> nn.Module:
    return freeze_(copy.deepcopy(model))


def _load_weights(model, folder: Path) -> None:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    _load_state(model, state, folder)


def _load_state(model, state: dict[str, torch.Tensor], where: Path) -> None:
    """Full tensors into `model` (cut to this rank's shards when sharded); SetupError naming `where` when they
    do not match it (a tied LM head may be absent)."""
    missing, unexpected = (fsdp.load_full_state_dict_(model, state) if fsdp.is_sharded(model)
                           else load_policy_weights(model, state))
    tied = {k for k in missing if "lm_head" in k}
    if set(missing) - tied or unexpected:
        raise SetupError(f"checkpoint {where} does not match the model: missing {missing}, unexpected {unexpected}")


def _lockstep(plans: list[torch.Tensor], model: nn.Module, dist: Dist | None) -> list[torch.Tensor | None]:
    if dist is None or dist.world == 1 or not fsdp.is_sharded(model):
        return list(plans)
    return [*plans, *[None] * (dist.max_int(len(plans)) - len(plans))]


@torch.no_grad()
def sequence_logprobs(model: nn.Module, batch: Rollouts, token_budget: int, dist: Dist | None = None) -> torch.Tensor:
    """Per-token log-probs [n, C] of the batch's completions under `model`, no gradient (with `dist` and a
    sharded model, in lockstep with the other ranks)."""
    device = batch.completion_ids.device
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=device)
    for rows in _lockstep(plan_micro_batches(batch, token_budget), model, dist):
        if rows is None:
            fsdp.idle_pass(model, device, backward=False)
            continue
        sub = batch.select(rows)
        ids, attention, prompt_len = sub.sequences()
        lp = completion_outputs(model, ids, attention, prompt_len, entry=fsdp.completion_entry(model)).logprobs
        out[rows, : lp.shape[1]] = lp.float()
    fsdp.reshard_all(model)  # no backward follows: free the root's gathered weights (no-op when not sharded)
    return out
