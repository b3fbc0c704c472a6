"""POPO's actor engine for verl 0.9.1: `POPOFSDPEngine`, verl's FSDP2 LM-head engine training on the positive
rollouts only with popo's loss, and `POPOEngineConfig`, verl's FSDP engine settings plus POPO's.

A mini-batch (`forward_backward_batch`, per data-parallel rank; `rows` reads verl's layout):

1. each row's credit is its POPO weight (the ``"popo"`` estimator's advantage); rows with weight > 0 are the
   positives, and N+ and W (positive tokens and weights) are summed over all ranks first;
2. the positives alone are split into micro-batches (verl's token-balanced split or fixed rows); a rank with
   fewer micro-batches than another runs idle ones (`rows.idle_micro_batch`: a synthetic zero-weight row) so
   every rank joins every FSDP collective, also when it has no positive at all;
3. per micro-batch: the EMA target's pooled features (no gradient; the target is sharded like the policy)
   and the policy's forward through verl's own input/output preparation with its final hidden states
   captured (`_forward`), then popo's micro-batch core (`popo.step_core`, the same as popo's trainer and the
   TRL bridge run): the predictor on the pooled features, the per-row target noise and the loss-table entry,
   weighted NLL + alpha * similarity + beta * entropy, normalised by the global N+ and W;
4. each loss is multiplied by the data-parallel size, because verl's FSDP2 averages gradients over ranks
   while popo's shares add up (verl's own losses do the same); the predictor's gradients are summed over
   ranks and divided by that size, so both equal the one-process gradient of the whole mini-batch.

`optimizer_step` clips the policy and the predictor together and steps both or neither
(`popo.step_core.clip_and_step`; the predictor's own AdamW follows the policy's learning rate), then the EMA
on the local shards (`popo.ema.ema_step_`, at the engine's own count of trainer steps, `trainer_step`). A
mini-batch without a positive anywhere, or with a non-finite loss or norm, changes nothing.
Checkpoints add POPO's companions (`popo.companions`, the format popo's trainer and TRL write: target shard,
predictor, its optimizer, the step count) in ``popo/world_size_{W}_rank_{r}/`` beside verl's files; loading
needs the same world size, as verl's own shards do.

The engine is plain verl unless its engine config is a `POPOEngineConfig` and it trains (the reference
model and log-prob passes run verl's code unchanged). Noise on the target features is keyed on each row's
tokens and the trainer step (`popo.seeds.content_noise_seeds`), so it does not depend on how rows are split. The update
reads the policy at temperature 1 (popo's loss is on the policy itself), whatever ``rollout.temperature``
sampled the rollouts; verl's own losses use the rollout temperature.

Switching it on (Hydra, with `register_engine()` run in every worker process, e.g. by the plugin)::

    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.fsdp_config._target_=popo.integrations.verl.engine.POPOEngineConfig
    +actor_rollout_ref.actor.fsdp_config.popo={alpha:0.1,tau:0.995,noise_std:0.02}
    actor_rollout_ref.actor.policy_loss.loss_mode=popo actor_rollout_ref.actor.entropy_coeff=<beta>
"""

from __future__ import annotations

import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id, get_device_name, get_vendor
from verl.utils.fsdp_utils import load_fsdp_model_to_gpu, offload_fsdp_model_to_cpu
from verl.workers.config import FSDPEngineConfig
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine.utils import postprocess_batch_func
from verl.workers.utils.padding import no_padding_2_padding

from popo import companions, fsdp, step_core
from popo.algorithms import BatchTotals, Shares, get_algorithm
from popo.distributed import Dist
from popo.ema import ema_step_, ema_update_, freeze_
from popo.integrations.verl import internals, rows
from popo.integrations.verl.settings import POPOVerlConfig, check_actor_settings
from popo.logprobs import masked_mean
from popo.predictor import Predictor
from popo.seeds import content_noise_seeds
from popo.step_core import PolicyArrays

_DECODER_METHOD = "popo_decoder_hidden"
"""The method added to the target's root FSDP unit: its decoder alone (no LM head), run as a forward."""


@dataclass
class POPOEngineConfig(FSDPEngineConfig):
    """verl's FSDP engine settings plus ``popo``: POPO's settings (the fields of `POPOVerlConfig`), checked
    when the config is built. Selected with ``actor_rollout_ref.actor.fsdp_config._target_`` (see
    `register_engine`)."""

    popo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        self.settings()

    def settings(self) -> POPOVerlConfig:
        return POPOVerlConfig.from_mapping(self.popo)


def _decoder_hidden(model: torch.nn.Module, **inputs) -> torch.Tensor:
    """The final (normed) hidden states of `model`'s decoder on verl's model inputs."""
    return model.get_decoder()(**inputs, use_cache=False).last_hidden_state


@contextmanager
def _captured_output(module: torch.nn.Module):
    """Collect `module`'s forward outputs (the last hidden state) while the block runs."""
    seen: list[torch.Tensor] = []

    def keep(_module, _args, output):
        seen.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = module.register_forward_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


class POPOFSDPEngine(FSDPEngineWithLMHead):
    """verl's FSDP2 LM-head engine with POPO's update (module docstring); plain verl when inactive."""

    def __init__(self, model_config, engine_config, optimizer_config, checkpoint_config):
        super().__init__(model_config, engine_config, optimizer_config, checkpoint_config)
        self._target = self._predictor = self._predictor_optimizer = None
        self._stepping = False  # whether the last mini-batch had a positive row anywhere
        self._steps = 0  # verl trainer steps taken (scheduler steps): the EMA schedule's and the noise's step
        self._losses_finite = True  # every micro-batch loss of the last mini-batch finite, on every rank
        settings = engine_config.settings() if isinstance(engine_config, POPOEngineConfig) else None
        self._algo = None if settings is None or engine_config.forward_only else settings.algo()
        if self._algo is None:
            return
        if engine_config.strategy != "fsdp2":
            raise ValueError(f"POPO's verl engine needs actor.strategy=fsdp2, not {engine_config.strategy!r}")
        if self.ulysses_sequence_parallel_size > 1 or self.model_config.lora_rank > 0:
            raise NotImplementedError("POPO's verl engine supports neither Ulysses sequence parallelism nor LoRA")
        self._algorithm = get_algorithm(self._algo.name)

    @property
    def popo_active(self) -> bool:
        """Whether this engine trains with POPO (else it is verl's FSDP engine unchanged)."""
        return self._algo is not None

    @property
    def algo(self):
        """popo's ``algo`` settings this engine trains with (`popo.algo_config.AlgoConfig`; None when inactive)."""
        return self._algo

    # ------------------------------------------------------------------ construction
    def initialize(self):
        super().initialize()
        if not self.popo_active:
            return
        self._dist = Dist(rank=self.get_data_parallel_rank(), world=self.get_data_parallel_size(),
                          device=torch.device(get_device_name()))
        if self.scaler is not None or getattr(getattr(self.engine_config, "qat", None), "enable", False):
            raise NotImplementedError("POPO's verl engine supports neither fp16 loss scaling nor QAT")
        if self._algorithm.needs_target(self._algo):
            self._build_companions()

    def _build_companions(self) -> None:
        """The EMA target (built and sharded by verl's own code, so exactly like the policy, then set to the
        policy's weights and frozen), the predictor (the same on every rank) and the predictor's AdamW."""
        target = freeze_(internals.build_sharded_copy(self))
        ema_update_(*fsdp.ema_pairs(target, self.module), 0.0)  # tau = 0: an exact copy of the policy's shards
        setattr(target, _DECODER_METHOD, types.MethodType(_decoder_hidden, target))
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(target, _DECODER_METHOD)
        if self.is_param_offload_enabled:
            offload_fsdp_model_to_cpu(target)
        self._target = target
        hf = self.model_config.hf_config
        hidden = getattr(hf, "hidden_size", None) or hf.get_text_config().hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.engine_config.seed)
            predictor = Predictor(hidden, self._algo.predictor_width or hidden, self._algo.predictor_layers)
        self._predictor = predictor.to(device=get_device_name(), dtype=torch.float32)
        self._dist.broadcast_(list(self._predictor.parameters()))
        opt = self.optimizer_config
        self._predictor_optimizer = torch.optim.AdamW(self._predictor.parameters(), lr=opt.lr, betas=tuple(opt.betas),
                                                      weight_decay=opt.weight_decay)

    @property
    def predictor(self) -> torch.nn.Module | None:
        return self._predictor

    @property
    def target(self) -> torch.nn.Module | None:
        return self._target

    # ------------------------------------------------------------------ forward and backward
    def forward_backward_batch(self, data, loss_function, forward_only=False):
        if forward_only or not self.popo_active:
            return super().forward_backward_batch(data, loss_function, forward_only)
        check_actor_settings(loss_function, self._algo)
        if "multi_modal_inputs" in data.keys():
            raise NotImplementedError("POPO's verl engine does not support multimodal inputs")
        # popo's loss is on the policy itself (temperature 1), whatever temperature sampled the rollouts
        tu.assign_non_tensor(data, sp_size=1, calculate_entropy=True, temperature=1.0)
        credit, positive, mask = rows.positive_rows(data)
        totals = step_core.batch_totals(mask, credit, positive, max_length=mask.shape[1], dist=self._dist)
        chosen = positive.nonzero().flatten().cpu()  # the positives, selected before any micro-batching
        planned = [] if chosen.numel() == 0 else rows.micro_batches(
            tu.index_select_tensor_dict(data, chosen),
            dynamic=bool(tu.get_non_tensor_data(data, "use_dynamic_bsz", True)),
            max_tokens=int(tu.get_non_tensor_data(data, "max_token_len_per_gpu", 0) or 0),
            rows=int(tu.get_non_tensor_data(data, "micro_batch_size_per_gpu", 1) or 1))
        count = self._dist.max_int(len(planned))
        self._stepping = totals.positive_tokens > 0
        step, outputs, nonfinite = self.trainer_step(), [], 0.0
        for index in range(count):
            micro = planned[index] if index < len(planned) else rows.idle_micro_batch(data)
            with internals.gradient_sync(self, last=index == count - 1):
                loss, shares, forwarded = self._popo_micro_batch(micro, totals, step)
                loss.backward()
            nonfinite += shares.get("nonfinite_losses", 0.0)
            metrics = {f"popo/{key}": self._metric(value) for key, value in shares.items()}
            metrics["popo/forwarded_rows"] = self._metric(forwarded)
            metrics["popo/idle_passes"] = self._metric(float(index >= len(planned)))
            outputs.append({"loss": float(loss.detach()), "metrics": metrics})
        if count:  # every rank has the same count: the collectives are joined by all or none
            self._losses_finite = self._dist.sum_values([nonfinite])[0] == 0
            if self._predictor is not None:
                self._reduce_predictor_grads()
        return postprocess_batch_func(output_lst=outputs, indices=None, data=data)

    def _popo_micro_batch(self, micro, totals: BatchTotals, step: int) -> tuple[torch.Tensor, Shares, float]:
        """One micro-batch through popo's micro-batch core (`popo.step_core`): its loss (its share of the
        mini-batch's POPO loss, times the data-parallel size, with gradient), its `Shares` and its rows."""
        micro = micro.to(get_device_id())
        credit, positive, mask = rows.positive_rows(micro)
        mask = mask & positive.unsqueeze(1)  # the idle stand-in row counts no token
        arrays = self._forward(micro, mask)
        keys = None
        if arrays.target is not None:
            ids = micro["input_ids"]
            keys = content_noise_seeds(ids.values(), ids.offsets(), self.engine_config.seed, step)
        x = step_core.loss_inputs(self._algorithm, self._algo, arrays, credit=credit, positive=positive,
                                  totals=totals, forwarded_tokens=totals.positive_tokens, predictor=self._predictor,
                                  row_keys=keys)
        loss, shares = step_core.loss_and_shares(self._algorithm, self._algo, x, arrays.entropy,
                                                 totals.positive_tokens)
        return loss * self._dist.world, shares, float(positive.sum())

    def _forward(self, micro, mask: torch.Tensor) -> PolicyArrays:
        """The target's pooled features (no gradient) and the policy's log-probs, entropies and per-token features
        on a micro-batch, through verl's own input and output preparation, in popo's [n, R] layout."""
        inputs, output_args = self.prepare_model_inputs(micro_batch=micro)
        unpadded = bool(tu.get_non_tensor_data(micro, "use_remove_padding", True))
        pad = int(output_args.get("pad_size", 0) or 0)

        def response(hidden: torch.Tensor) -> torch.Tensor:  # [n, R, H]: the state at each response token
            return rows.response_hidden(rows.packed_hidden(hidden, micro, remove_padding=unpadded, pad_size=pad), micro)

        dtype = internals.autocast_dtype(self)
        autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device_type=get_device_name(), dtype=dtype)
        with autocast:
            target = None
            if self._target is not None:
                with torch.no_grad():
                    hidden = getattr(self._target, _DECODER_METHOD)(**inputs)
                    fsdp.reshard_all(self._target)  # no backward follows: free the root's gathered weights
                    target = masked_mean(response(hidden), mask).float()
            with _captured_output(self.module.get_decoder()) as captured:
                raw = self.module(**inputs, use_cache=False)
            out = self.prepare_model_outputs(output=raw, output_args=output_args, micro_batch=micro,
                                             logits_processor_func=None)
        return PolicyArrays(no_padding_2_padding(out["log_probs"], micro),
                            no_padding_2_padding(out["entropy"], micro), mask,
                            features=response(captured[-1]) if target is not None else None, target=target)

    def _metric(self, value: float):
        """A per-micro-batch value for verl's metric lists: verl averages over ranks and adds over
        micro-batches (`Metric.aggregate_dp` with SUM), so a rank reports world x its share (or count) and
        the logged value is the mini-batch's total."""
        from verl.utils.metric import AggregationType, Metric

        return Metric(AggregationType.SUM, value * self._dist.world)

    def _reduce_predictor_grads(self) -> None:
        """Sum the predictor's gradients over ranks and undo the data-parallel scaling of the loss."""
        params = list(self._predictor.parameters())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._dist.sum_grads(params)
        if self._dist.world > 1:
            for p in params:
                p.grad.div_(self._dist.world)

    # ------------------------------------------------------------------ optimizer and EMA
    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks, through the collective device (gradients may sit in CPU memory)."""
        return self._dist.sum_(t.to(self._dist.device)).to(t.device)

    def trainer_step(self) -> int:
        """verl's trainer step, counted by popo (`lr_scheduler_step`, checkpointed with the companions): the
        EMA schedule's and the noise's step."""
        return self._steps

    def lr_scheduler_step(self):
        self._steps += 1  # verl's worker steps the scheduler once per trainer step
        return super().lr_scheduler_step()

    def optimizer_zero_grad(self):
        super().optimizer_zero_grad()
        if self._predictor_optimizer is not None:
            self._predictor_optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self):
        """Clip the policy's and the predictor's gradients together, step both, then the EMA
        (`popo.step_core.clip_and_step`, `popo.ema.ema_step_`); nothing moves when the mini-batch had no positive
        anywhere or a loss or the norm is not finite. Returns the norm."""
        if not self.popo_active:
            return super().optimizer_step()
        if not self._stepping:
            return 0.0
        params, optimizers = list(self.module.parameters()), [self.optimizer]
        if self._predictor is not None:  # its AdamW follows the policy's learning rate
            params += list(self._predictor.parameters())
            for group in self._predictor_optimizer.param_groups:
                group["lr"] = self.optimizer.param_groups[0]["lr"]
            optimizers.append(self._predictor_optimizer)
        norm, stepped = step_core.clip_and_step(
            params, optimizers, max_norm=float(self.optimizer_config.clip_grad), finite=self._losses_finite,
            clip=lambda ps, max_norm: fsdp.clip_gradients_(ps, max_norm, self._sum_over_ranks))
        if stepped and self._target is not None:
            ema_step_(fsdp.ema_pairs(self._target, self.module), step=self.trainer_step(),
                      total_steps=int(self.optimizer_config.total_training_steps or 0), cfg=self._algo)
        return float(norm)

    # ------------------------------------------------------------------ placement and checkpoints
    def to(self, device: str, model: bool = True, optimizer: bool = True, grad: bool = True):
        super().to(device=device, model=model, optimizer=optimizer, grad=grad)
        target = getattr(self, "_target", None)
        if target is None or not model or internals.weights_offloaded_by_fsdp(self):
            return
        if device == get_device_name():
            load_fsdp_model_to_gpu(target)
        elif device == "cpu":
            offload_fsdp_model_to_cpu(target)

    def companions_path(self, checkpoint: str):
        """This rank's folder of POPO's companions in a checkpoint folder (`popo.companions`, per rank)."""
        return companions.folder(checkpoint, rank=self._dist.rank, world=self._dist.world)

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None, **kwargs):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep, **kwargs)
        if self._target is None or local_path is None:
            return
        fsdp.reshard_all(self._target)
        companions.write(self.companions_path(local_path), companions.Companions(
            target={k: fsdp.local(v).detach().cpu().clone() for k, v in self._target.state_dict().items()},
            predictor=self._predictor.state_dict(), predictor_optimizer=self._predictor_optimizer.state_dict(),
            state={"steps": self._steps}))
        torch.distributed.barrier()

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=True, **kwargs):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load, **kwargs)
        if self._target is None or local_path is None:
            return
        where = self.companions_path(local_path)
        saved = companions.read(where, target=True, predictor=True, predictor_optimizer=True)
        fsdp.reshard_all(self._target)
        own = self._target.state_dict()
        if set(own) != set(saved.target):
            raise KeyError(f"{where}: target tensors do not match the model (same world size needed)")
        with torch.no_grad():
            for name, tensor in own.items():
                fsdp.local(tensor).copy_(saved.target[name])
        self._predictor.load_state_dict(saved.predictor)
        self._predictor_optimizer.load_state_dict(saved.predictor_optimizer)
        self._steps = int(saved.state["steps"])


def register_engine() -> type[POPOFSDPEngine]:
    """Enter `POPOFSDPEngine` into verl's `EngineRegistry` for language models with the fsdp and fsdp2 backends
    on this process's platform, under its vendor key: verl looks that key up before the device-wide one, so
    every LM-head FSDP engine of this process is then a `POPOFSDPEngine` (which is verl's engine unchanged
    unless its config is a `POPOEngineConfig`). Idempotent; ValueError when another class holds the key."""
    device, vendor = get_device_name(), get_vendor()
    key = (device, vendor)
    internals.check_verl()
    table = internals.engine_table()
    held = {backend: table.get(backend, {}).get(key) for backend in ("fsdp", "fsdp2")}
    taken = {backend: cls for backend, cls in held.items() if cls is not None and cls is not POPOFSDPEngine}
    if taken:
        raise ValueError(f"verl engine key {key} is already registered to {taken}")
    missing = [backend for backend, cls in held.items() if cls is None]
    if missing:
        EngineRegistry.register(model_type="language_model", backend=missing, device=device, vendor=vendor)(
            POPOFSDPEngine)
    return POPOFSDPEngine
