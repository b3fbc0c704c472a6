"""Assembly: a configuration becomes the parts of a run (`build_run`), handed to the trainer.

Device and process group, prompts (rendered and length-checked), the policy and its companions
(`popo.models`, sharded when `accelerate launch` asked for FSDP), optimizer and schedule, rollout
engine, verifier, prompt stream, metrics writer, and on `--resume` the state of the latest intact
checkpoint. The parts are made where they belong (the policy: `popo.loading`; the reward:
`popo.rewards.make`; the rollout engine: `popo.rollout.make`); this module puts them together. Every
failure a user can cause (missing model path, empty dataset) raises `SetupError` with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from popo import fsdp, loading
from popo.algorithms import get_algorithm
from popo.checkpoint import clear_partial_writes, latest_checkpoint, load_training_state
from popo.config import Config, to_dict
from popo.data.example import column_names
from popo.data.prepare import fit_prompts, held_out_examples, is_testbed, load_examples_for
from popo.data.stream import PromptStream
from popo.distributed import Dist
from popo.errors import ConfigError, SetupError
from popo.models import Models
from popo.rewards.make import make_verifier
from popo.rollout.make import make_engine
from popo.run_dir import check as check_run_dir, claim
from popo.trainer import PromptSet, Run, Trainer


def quiet_libraries() -> None:
    """No progress bars from transformers / huggingface_hub (weight loading, shard writing): they turn a log
    file into one long line of carriage returns; popo reports its own progress."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str) -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warmup, then constant or cosine decay to 0."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * progress)).item())
        return 1.0
    return factor


def placement(c: Config) -> tuple[torch.device, Dist, Any]:
    """(device, process group, FSDP plan or None) of this process: one process unless `accelerate launch`
    started several, sharded when it was given an FSDP config."""
    device = resolve_device(c.model.device)
    dist = Dist.from_environment(device.type)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        sharding = fsdp.plan_from_environment()
    except ValueError as err:
        raise SetupError(str(err)) from None
    if c.rollout.prompts_per_step % dist.world:
        raise SetupError(f"rollout.prompts_per_step={c.rollout.prompts_per_step} must be divisible by the "
                         f"number of processes ({dist.world})")
    return device, dist, sharding


def evaluation_line(c: Config, source: str | None, split: str | None, count: int) -> str:
    """What the run will evaluate on (a testbed or hub source with its split, a local file by its name: it has
    no splits), or why it evaluates nothing."""
    from popo.data.sources import LOCAL_SUFFIXES

    if source:
        local = not is_testbed(source) and (Path(source).suffix.lower() in LOCAL_SUFFIXES or Path(source).exists())
        return f"evaluation: {count} held-out prompts from {source}" + ("" if local else f" ({split})")
    if not c.data.eval_source:
        return "evaluation: off (data.eval_source is empty)"
    return (f"evaluation: off (data.source={c.data.source} has no held-out split popo knows; set data.eval_source "
            "to a file or hub dataset of the same task, e.g. a benchmark .jsonl)")


def make_optimizer(models: Models, c: Config):
    """AdamW over the trainable parameters and its schedule. The policy and the predictor are separate groups
    (same settings): under FSDP2 the policy's parameters are DTensors and the predictor's plain tensors, and
    the multi-tensor Adam that CUDA uses by default refuses a group that mixes the two."""
    o = c.optim
    groups = [{"params": params} for params in models.trainable_groups()]
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, foreach=o.foreach)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(c.train.steps, o.warmup_ratio,
                                                                             o.schedule))


def open_metrics(c: Config, resume_step: int | None):
    """The run folder's config.yaml and its metrics stream (rank 0 only)."""
    from popo.tracking import MetricsWriter

    out_dir = Path(c.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(c), sort_keys=False))
    return MetricsWriter(out_dir, resume_step=resume_step, tensorboard=c.train.tensorboard,
                         report_to=c.train.report_to, config=to_dict(c))


def build_run(config: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> Run:
    """Every part of the run `config` describes; with `resume`, restored from the latest intact checkpoint
    in `train.out_dir`. Rank 0 writes config.yaml and opens the metrics stream."""
    c = config
    algorithm = get_algorithm(c.algo.name)
    torch.manual_seed(c.train.seed)
    device, dist, sharding = placement(c)
    if sharding and c.train.eval_start_kl:
        raise ConfigError("train.eval_start_kl is not supported with FSDP sharding (the evaluation's slices are not "
                          "in lockstep across ranks): set it to false")
    check_run_dir(Path(c.train.out_dir), resume=resume, overwrite=c.train.overwrite)  # before any work
    train_examples = load_examples_for(c, c.data.source, split=c.data.split, log=log)
    eval_source, eval_split, eval_examples = held_out_examples(c, log)
    log(evaluation_line(c, eval_source, eval_split, len(eval_examples)))
    # the reward before any model: user functions are imported and checked against the dataset's columns
    verifier = make_verifier(c, columns=column_names(train_examples), log=log)
    with dist.main_first():  # rank 0 builds the testbed cache, the others then read it
        model_path = loading.resolve_model_path(c, log)
    # sharding moves each unit's shard to the GPU: load the full weights in CPU memory first
    policy, tokenizer = loading.load_policy(model_path, c, torch.device("cpu") if sharding else device)
    context = getattr(policy.config, "max_position_embeddings", None)  # prompts over the cap: error or skip
    train_set = PromptSet(*fit_prompts(c, train_examples, tokenizer, context=context, source=c.data.source,
                                       split=c.data.split, log=log))
    eval_set = PromptSet(*fit_prompts(c, eval_examples, tokenizer, context=context, source=eval_source,
                                      split=eval_split, log=log))
    models = Models.build(policy, with_target=algorithm.needs_target(c.algo),
                          with_reference=algorithm.needs_reference(c.algo) or c.train.eval_start_kl,
                          predictor_width=c.algo.predictor_width,
                          predictor_layers=c.algo.predictor_layers, device=device, sharding=sharding,
                          offload_companions=c.model.offload_companions)
    if (line := models.describe_sharding(dist)) is not None:
        log(line)
    models.make_identical_(dist)  # every rank starts from rank 0's replicated tensors
    optimizer, scheduler = make_optimizer(models, c)
    engine = make_engine(c, models.policy, tokenizer, model_path)
    stream = PromptStream(len(train_set), c.rollout.prompts_per_step, c.train.seed)
    step = bad_steps = rollouts = 0
    # rank 0 owns the run folder from here: a second process is kept out, a replaced run's files go
    lock = claim(Path(c.train.out_dir), resume=resume, overwrite=c.train.overwrite) if dist.is_main else None
    if resume:
        step, bad_steps, rollouts = restore(Path(c.train.out_dir), models, optimizer, scheduler, engine, log)
    writer = open_metrics(c, step if resume else None) if dist.is_main else None  # only rank 0 writes
    return Run(config=c, algorithm=algorithm, models=models, optimizer=optimizer, scheduler=scheduler, engine=engine,
               verifier=verifier, train_set=train_set, eval_set=eval_set, stream=stream, tokenizer=tokenizer,
               dist=dist, writer=writer, start_step=step, bad_steps=bad_steps, rollouts_total=rollouts, log=log,
               lock=lock)


def build_trainer(config: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> Trainer:
    """`Trainer(build_run(config, ...))`: the one-line way to train from a configuration."""
    return Trainer(build_run(config, resume=resume, log=log))


def restore(run_dir: Path, models: Models, optimizer, scheduler, engine,
            log: Callable[[str], None]) -> tuple[int, int, int]:
    """Load the latest intact checkpoint of `run_dir` into the parts; returns (step, consecutive bad steps,
    rollouts sampled so far: B x G a step for a checkpoint older than that count)."""
    clear_partial_writes(run_dir)  # writes a crash or a full disk left unfinished
    path = latest_checkpoint(run_dir, log)
    if path is None:
        raise SetupError(f"no intact checkpoint to resume from in {run_dir / 'checkpoints'}")
    try:
        models.load(path)
        state = load_training_state(path, optimizer=optimizer, scheduler=scheduler,
                                    adapt_optimizer=lambda saved: models.optimizer_state_for_run(optimizer, saved))
    except (ValueError, KeyError, FileNotFoundError) as err:  # settings that change the trained parameters
        raise SetupError(f"checkpoint {path} does not fit this run's settings ({str(err).splitlines()[0]}): "
                         f"resume with the settings in {run_dir / 'config.yaml'}, or start a new run from its "
                         f"weights with model.name={path / 'policy'}") from None
    if engine.owns_weights:
        with models.gathered():
            engine.push_weights(models.policy)
    log(f"resumed from {path} at step {state['step']}")
    c = state["config"]["rollout"]
    return state["step"], state["bad_steps"], state.get("rollouts_total", state["step"] * c["prompts_per_step"] *
                                                         c["group_size"])
