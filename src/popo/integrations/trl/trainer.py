"""`POPOTrainer`: TRL's `GRPOTrainer` with POPO as `loss_type="popo"`.

With any other `loss_type` every method below hands over to `GRPOTrainer` unchanged. With POPO, TRL still
samples, scores and logs the completions (vLLM or `generate`, reward functions, datasets, PEFT, the
`Trainer` loop, checkpoints), and popo does the rest with its own functions:

- `_prepare_inputs`: after TRL's `_generate_and_score_completions`, the generation batch becomes POPO
  micro-batches (`batches.plan`): positives only, with normalisers summed over the whole batch and all
  processes;
- `compute_loss`: popo's loss on one micro-batch (`batches.MicroBatch.loss`, popo's own micro-batch path),
  forwarding its rows only;
- `training_step`: at the end of the accumulation window the gradients of the policy and the predictor
  are summed over processes (a process without positives adds zeros) and POPO's metrics logged;
- `_clip_grad_norm`: the policy and the predictor are clipped together, and a non-finite loss, metric or
  norm drops their gradients so TRL's optimizer step moves nothing (`popo.step_core.clip_and_step`);
- after each optimizer step (a hook on the optimizer) the EMA target moves towards the policy
  (`popo.ema.ema_step_`);
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: the target and the predictor travel with TRL's
  checkpoints in `checkpoint-N/popo/` (`popo.companions`, the format popo's trainer and verl's engine write
  too); the predictor's optimizer state is in TRL's optimizer.

A generation batch without any positive anywhere leaves every gradient unset, so the optimizer step
changes nothing and the target does not move (popo's trainer skips such a step the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from popo import companions
from popo.algorithms import Algorithm, Shares, get_algorithm
from popo.config import AlgoConfig
from popo.distributed import Dist, reduce_update_metrics
from popo.ema import ema_step_
from popo.errors import ConfigError, SetupError
from popo.integrations.trl.batches import MicroBatch, plan
from popo.integrations.trl.config import POPO_LOSS_TYPE, POPOConfig
from popo.models import Models
from popo.step_core import clip_and_step, metrics_finite


@dataclass
class PopoState:
    """POPO's part of the trainer: settings, models, and the current accumulation window."""

    cfg: AlgoConfig
    algorithm: Algorithm
    models: Models
    dist: Dist
    params: list[torch.nn.Parameter] = field(default_factory=list)  # the policy's trainable ones, the predictor's
    ema_pairs: tuple[list, list] = ((), ())  # (target, online) tensors of the EMA step, matched once
    rewards_per_func: torch.Tensor | None = None  # the last `_calculate_rewards` result, all processes
    window: Shares = field(default_factory=Shares)  # metrics of the window's micro-batches, added up
    window_rows: int = 0  # training rows of the window's generation batch, all processes
    finite: bool = True  # the window's losses and metrics, over all processes, allow a step
    stepped: bool = False  # the last optimizer step moved the parameters (all finite, gradients kept)
    generation: tuple | None = None  # (TRL's outputs, rewards) of the last generation batch, this process


class POPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose `loss_type="popo"` trains with POPO on the positive completions only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.popo: PopoState | None = None
        if self.args.loss_type != POPO_LOSS_TYPE:
            return
        if not isinstance(self.args, POPOConfig):
            raise ConfigError("loss_type='popo' needs a POPOConfig (it holds POPO's settings), not a "
                              f"{type(self.args).__name__}")
        if self.optimizer is not None:
            raise ConfigError("POPOTrainer builds its own optimizer with loss_type='popo' (the predictor trains "
                              "with the policy): leave `optimizers` unset")
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise SetupError(f"loss_type='popo' does not support {self.accelerator.distributed_type} yet: use DDP "
                             "(or popo's own trainer, `popo train`, for FSDP)")
        if self.tools or self.environment_factories is not None or self._is_vlm:
            raise SetupError("loss_type='popo' does not support tools, environments or multimodal models yet "
                             "(see docs/integrations.md)")
        cfg, algorithm = self.args.popo_algo(), get_algorithm("popo")
        with torch.random.fork_rng(devices=[]):  # the same predictor on every process, TRL's RNG untouched
            torch.manual_seed(self.args.seed)
            models = Models.build(self.model, with_target=algorithm.needs_target(cfg), with_reference=False,
                                  predictor_width=cfg.predictor_width, predictor_layers=cfg.predictor_layers,
                                  device=self.accelerator.device)
        acc = self.accelerator
        dist = Dist(acc.process_index, acc.num_processes, acc.local_process_index, acc.device)
        self.popo = PopoState(cfg, algorithm, models, dist, params=models.trainable_parameters())
        if models.target is not None:  # matched once: the step itself is then one foreach lerp
            self.popo.ema_pairs = models.ema_pairs()

    # ------------------------------------------------------------------ generation -> micro-batches
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.popo is not None:
            self.popo.rewards_per_func = rewards
        return rewards

    def _prepare_inputs(self, generation_batch):
        if self.popo is None:
            return super()._prepare_inputs(generation_batch)
        if not self.model.training:  # evaluation: the loss of the whole batch, no buffering
            return self._popo_plan(generation_batch, parts=1, mode="eval")[0]
        parts = self.args.steps_per_generation
        if self._step % parts == 0 or self._buffered_inputs is None:
            self._buffered_inputs = self._popo_plan(generation_batch, parts=parts, mode="train")
        return self._buffered_inputs[self._step % parts]

    def _popo_plan(self, generation_batch, *, parts: int, mode: str) -> list[MicroBatch]:
        outputs = self._generate_and_score_completions(generation_batch)
        per_func = self.popo.rewards_per_func  # [all processes' rows, reward functions]
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = float("nan")  # unscorable: never positive
        n = outputs["completion_ids"].shape[0]
        first = self.accelerator.process_index * n
        rewards = rewards[first: first + n]
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        if n % group_size:
            raise ConfigError(f"loss_type='popo' needs whole prompts on each process: {n} rows per process is not "
                              f"a multiple of {group_size} generations (per_device_eval_batch_size in evaluation)")
        batches, counts = plan(outputs, rewards, group_size=group_size, algorithm=self.popo.algorithm,
                               cfg=self.popo.cfg, parts=parts, dist=self.popo.dist, seed=self.args.seed,
                               step=self.state.global_step, first_row=first)
        self.popo.generation = (outputs, rewards)
        self.popo.window_rows = int(counts["rows_forwarded"])
        logs = self._metrics[mode]
        logs["popo/positive_fraction"].append(counts["positives"] / max(1.0, counts["rollouts"]))
        logs["popo/prompts_with_positive"].append(counts["prompts_with_positive"])
        logs["popo/rows_forwarded"].append(counts["rows_forwarded"])
        return batches

    # ------------------------------------------------------------------ loss, gradients, optimizer
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.popo is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if return_outputs:
            raise ValueError("POPOTrainer does not support returning outputs")
        p = self.popo
        loss, metrics = inputs.loss(p.models, p.algorithm, p.cfg)
        if self.model.training:
            p.window.add(metrics)
        else:
            self._log_popo(reduce_update_metrics(metrics, p.dist), "eval")
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.popo is not None and self._step % self.args.steps_per_generation == 0:
            for p in self.popo.params:  # the Trainer's `model.zero_grad()` misses the predictor
                p.grad = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.popo is not None and self.accelerator.sync_gradients:  # the window's last micro-batch
            p = self.popo
            if p.window_rows:  # no training row anywhere: gradients stay unset, the step changes nothing
                p.dist.sum_grads(p.params)
            metrics = reduce_update_metrics(p.window, p.dist)
            p.finite = metrics_finite(metrics)
            self._log_popo(metrics, "train")
            p.window = Shares()
        return loss

    def _log_popo(self, metrics: dict[str, float], mode: str) -> None:
        for key, value in metrics.items():
            self._metrics[mode][f"popo/{key}"].append(value)

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if self.popo is not None and fresh:
            if self.popo.models.predictor is not None:
                optimizer.add_param_group({"params": list(self.popo.models.predictor.parameters()),
                                           "weight_decay": self.args.weight_decay})
            optimizer.register_step_post_hook(self._popo_after_step)
        return optimizer

    def _popo_after_step(self, *_) -> None:
        """The EMA step after an optimizer step that had something to learn from and moved the parameters."""
        p = self.popo
        if p.models.target is None or not p.window_rows or not p.stepped:
            return
        tau = ema_step_(p.ema_pairs, step=self.state.global_step, total_steps=self.state.max_steps, cfg=p.cfg)
        self._metrics["train"]["popo/tau"].append(tau)

    def _clip_grad_norm(self, model):
        if self.popo is None:
            return super()._clip_grad_norm(model)
        return self._popo_clip(self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if self.popo is not None and grad_norm is None:  # max_grad_norm 0: the norm only
            grad_norm = self._popo_clip(0.0)
        return super()._get_grad_norm(model, grad_norm)

    def _popo_clip(self, max_norm: float):
        """popo's clip-and-step rule before TRL's optimizer step: the policy and the predictor clipped together,
        their gradients dropped (so TRL's step leaves them) when a loss, metric or the norm is not finite."""
        p = self.popo
        norm, p.stepped = clip_and_step(p.params, (), max_norm=max_norm, clip=self.accelerator.clip_grad_norm_,
                                        finite=p.finite)
        return norm

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.popo is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            companions.write(companions.folder(folder), self.popo.models.saved_companions())

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.popo is not None and checkpoint is not None:
            where = companions.folder(checkpoint)
            models = self.popo.models
            models.restore_companions(companions.read(where, target=models.target is not None,
                                                      predictor=models.predictor is not None), where)
