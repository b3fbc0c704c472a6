"""Assembly: a configuration becomes the parts of a run (`build_run`), handed to the trainer.

Device and process group, prompts (rendered and length-checked), the policy and its companions
(`popo.models`, sharded when `accelerate launch` asked for FSDP), optimizer and schedule, rollout
engine, verifier, prompt stream, metrics writer, and on `--resume` the state of the latest intact
checkpoint. Every failure a user can cause (missing model path, empty dataset) raises `SetupError` with
one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from popo import fsdp
from popo.algorithms import get_algorithm
from popo.checkpoint import latest_checkpoint, load_training_state
from popo.config import Config, to_dict
from popo.data.example import Example
from popo.data.stream import PromptStream
from popo.distributed import Dist
from popo.errors import DataError, SetupError
from popo.models import Models
from popo.trainer import PromptSet, Run, Trainer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def testbed_task(config: Config):
    from popo.testbed.task import AdditionTask

    return AdditionTask(digits=config.testbed.digits, test_size=config.testbed.test_size)


def resolve_model_path(config: Config, log: Callable[[str], None] = print) -> str:
    """A local folder or hub id; `testbed` builds (or reuses) the warmed-up tiny model."""
    if config.model.name == "testbed":
        from popo.testbed.sft import prepare_testbed

        tb = config.testbed
        return str(prepare_testbed(tb.cache_dir, testbed_task(config), steps=tb.warmup_steps,
                                   batch_size=tb.warmup_batch, lr=tb.warmup_lr, log=log))
    name = config.model.name
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if looks_local and not (Path(name).expanduser() / "config.json").is_file():
        raise SetupError(f"model path not found (no config.json in it): {name}")
    return name


def load_policy(path: str, config: Config, device: torch.device):
    dtype = getattr(torch, config.model.dtype)
    kwargs = {"dtype": dtype}
    if config.model.attn_implementation:
        kwargs["attn_implementation"] = config.model.attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():  # a LoRA checkpoint: merge it into its base
            from popo.lora import load_adapter_merged

            model = load_adapter_merged(path, **kwargs).to(device)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
    except OSError as err:
        raise SetupError(f"cannot load model {path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = config.model.lora
    if lora.r > 0:
        from popo.lora import apply_lora

        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules,
                           config.model.gradient_checkpointing)
    return model, tokenizer


def load_examples_for(config: Config, source: str, *, split: str, log: Callable[[str], None]) -> list[Example]:
    """Examples from the testbed generator, a local file or a hub dataset."""
    if source == "testbed":
        task = testbed_task(config)
        if split == "test":
            return task.test_examples()
        return task.train_examples(config.testbed.train_size, seed=0)
    from popo.data.sources import load_examples

    d = config.data
    examples, report = load_examples(source, split=split, problem_key=d.problem_key,
                                     answer_key=d.answer_key, on_bad_row=d.on_bad_row)
    skipped = getattr(report, "skipped", 0)
    if skipped:
        log(f"data: skipped {skipped} bad rows in {source} ({report})")
    if not examples:
        raise SetupError(f"dataset {source!r} has no usable rows")
    return examples


def render_prompts(config: Config, examples: list[Example], tokenizer) -> list[str]:
    if config.data.template == "plain":
        return [ex.problem for ex in examples]
    from popo.data.templates import render_prompt

    return [render_prompt(ex.problem, config.data.template, tokenizer) for ex in examples]


def fit_prompts(config: Config, examples: list[Example], tokenizer, *, context: int | None, source: str,
                split: str, log: Callable[[str], None]) -> tuple[list[Example], list[str]]:
    """The rendered prompts and their examples, with the prompt-length cap applied.

    The cap is `data.max_prompt_tokens`, and the model's context (`context` tokens) less
    `rollout.max_new_tokens` when that is smaller. A longer prompt is a `DataError` naming file, line
    and field, or with `data.on_bad_row=skip` is dropped and counted in the log.
    """
    from popo.data.sources import locate_examples

    d = config.data
    prompts = render_prompts(config, examples, tokenizer)
    limit, why = d.max_prompt_tokens, f"data.max_prompt_tokens={d.max_prompt_tokens}"
    if context:
        room = context - config.rollout.max_new_tokens
        if room < 1:
            raise SetupError(f"rollout.max_new_tokens={config.rollout.max_new_tokens} leaves no room for a "
                             f"prompt in the model's context of {context} tokens")
        if room < limit:
            limit, why = room, f"model context {context} - rollout.max_new_tokens {config.rollout.max_new_tokens}"
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return examples, prompts
    first = examples[too_long[0]]
    where = (locate_examples(source, [first.id], split=split, problem_key=d.problem_key,
                             answer_key=d.answer_key) if source != "testbed" else {})
    message = (f"{where.get(first.id, f'{source}: example {first.id!r}')}: field '{d.problem_key or 'problem'}': "
               f"the prompt is {lengths[too_long[0]]} tokens with the template, over the limit of {limit} ({why})")
    if d.on_bad_row == "error":
        raise DataError(message)
    log(f"data: skipped {len(too_long)} prompts longer than {limit} tokens in {source} (first: {message})")
    dropped = set(too_long)
    kept = [i for i in range(len(examples)) if i not in dropped]
    if not kept:
        raise SetupError(f"dataset {source!r} has no prompt within {limit} tokens")
    return [examples[i] for i in kept], [prompts[i] for i in kept]


def make_verifier(config: Config):
    if config.data.source == "testbed":
        from popo.testbed.task import AdditionVerifier

        return AdditionVerifier()
    from popo.rewards import MathVerifier

    return MathVerifier()


def make_engine(config: Config, policy: torch.nn.Module, tokenizer, model_path: str):
    """The rollout engine named by `rollout.engine`."""
    r = config.rollout
    if r.engine == "vllm":
        from popo.rollout.vllm import VLLMEngine

        return VLLMEngine(model_path, tokenizer, mode=r.vllm_mode, server_url=r.vllm_server_url,
                          gpu_memory_utilization=r.vllm_gpu_memory_utilization, dtype=config.model.dtype,
                          sync_dir=str(Path(config.train.out_dir) / "vllm-sync"),
                          max_prompt_tokens=config.data.max_prompt_tokens)
    from popo.rollout import HFEngine

    return HFEngine(policy, tokenizer, max_prompt_tokens=config.data.max_prompt_tokens,
                    max_batch_rollouts=r.max_batch_rollouts)


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


def build_run(config: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> Run:
    """Every part of the run `config` describes; with `resume`, restored from the latest intact checkpoint
    in `train.out_dir`. Rank 0 writes config.yaml and opens the metrics stream."""
    c = config
    algorithm = get_algorithm(c.algo.name)
    torch.manual_seed(c.train.seed)
    device = resolve_device(c.model.device)
    dist = Dist.from_environment(device.type)  # one process unless launched by accelerate
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:  # FSDP when `accelerate launch` was given an FSDP config
        sharding = fsdp.plan_from_environment()
    except ValueError as err:
        raise SetupError(str(err)) from None
    if c.rollout.prompts_per_step % dist.world:
        raise SetupError(f"rollout.prompts_per_step={c.rollout.prompts_per_step} must be divisible by the "
                         f"number of processes ({dist.world})")
    train_examples = load_examples_for(c, c.data.source, split=c.data.split, log=log)
    eval_examples = load_examples_for(c, c.data.eval_source, split="test", log=log) if c.data.eval_source else []
    if c.data.eval_size:
        eval_examples = eval_examples[: c.data.eval_size]
    with dist.main_first():  # rank 0 builds the testbed cache, the others then read it
        model_path = resolve_model_path(c, log)
    # sharding moves each unit's shard to the GPU: load the full weights in CPU memory first
    policy, tokenizer = load_policy(model_path, c, torch.device("cpu") if sharding else device)
    context = getattr(policy.config, "max_position_embeddings", None)  # prompts over the cap: error or skip
    train_set = PromptSet(*fit_prompts(c, train_examples, tokenizer, context=context, source=c.data.source,
                                       split=c.data.split, log=log))
    eval_set = PromptSet(*fit_prompts(c, eval_examples, tokenizer, context=context, source=c.data.eval_source,
                                      split="test", log=log))
    models = Models.build(policy, with_target=algorithm.needs_target(c.algo),
                          with_reference=algorithm.needs_reference(c.algo), predictor_width=c.algo.predictor_width,
                          predictor_layers=c.algo.predictor_layers, device=device, sharding=sharding,
                          offload_companions=c.model.offload_companions)
    if (line := models.describe_sharding(dist)) is not None:
        log(line)
    models.make_identical_(dist)  # every rank starts from rank 0's replicated tensors
    o = c.optim
    optimizer = torch.optim.AdamW(models.trainable_parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(c.train.steps, o.warmup_ratio, o.schedule))
    engine = make_engine(c, models.policy, tokenizer, model_path)
    verifier = make_verifier(c)
    stream = PromptStream(len(train_set), c.rollout.prompts_per_step, c.train.seed)
    step = bad_steps = 0
    if resume:
        step, bad_steps = restore(Path(c.train.out_dir), models, optimizer, scheduler, engine, log)
    writer = None  # only rank 0 writes logs and checkpoints
    if dist.is_main:
        from popo.tracking import MetricsWriter

        out_dir = Path(c.train.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(c), sort_keys=False))
        writer = MetricsWriter(out_dir, resume_step=step if resume else None, tensorboard=c.train.tensorboard)
    return Run(config=c, algorithm=algorithm, models=models, optimizer=optimizer, scheduler=scheduler, engine=engine,
               verifier=verifier, train_set=train_set, eval_set=eval_set, stream=stream, tokenizer=tokenizer,
               dist=dist, writer=writer, start_step=step, bad_steps=bad_steps, log=log)


def build_trainer(config: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> Trainer:
    """`Trainer(build_run(config, ...))`: the one-line way to train from a configuration."""
    return Trainer(build_run(config, resume=resume, log=log))


def restore(run_dir: Path, models: Models, optimizer, scheduler, engine, log: Callable[[str], None]) -> tuple[int, int]:
    """Load the latest intact checkpoint of `run_dir` into the parts; returns (step, consecutive bad steps)."""
    path = latest_checkpoint(run_dir, log)
    if path is None:
        raise SetupError(f"no intact checkpoint to resume from in {run_dir / 'checkpoints'}")
    models.load(path)
    if engine.owns_weights:
        with models.gathered():
            engine.push_weights(models.policy)
    state = load_training_state(path, optimizer=optimizer, scheduler=scheduler,
                                adapt_optimizer=lambda saved: models.optimizer_state_for_run(optimizer, saved))
    log(f"resumed from {path} at step {state['step']}")
    return state["step"], state["bad_steps"]
