"""Turning a configuration into the parts a run needs: device, models, prompts and the verifier.

Every failure a user can cause (missing model path, empty dataset) raises `SetupError` with one line.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
import random
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from popo.config import Config
from popo.data.example import Example


class SetupError(RuntimeError):
    """A problem with the run's inputs, reported as one line."""


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


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    return clone.eval()


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
    from popo.data.sources import DataError, locate_examples

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
    from popo.rewards.math import MathVerifier

    return MathVerifier()


class PromptStream:
    """Prompts in a seeded order, reshuffled each epoch; batch `step` is a pure function of the step,
    so a resumed run sees exactly the prompts an uninterrupted one would."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size == 0:
            raise SetupError("no training prompts")
        self.size, self.batch_size, self.seed = size, batch_size, seed

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def batch(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        orders: dict[int, list[int]] = {}
        out = []
        for pos in positions:
            epoch = pos // self.size
            if epoch not in orders:  # shuffle each epoch once, not once per prompt
                orders[epoch] = self._order(epoch)
            out.append(orders[epoch][pos % self.size])
        return out


def build_models(policy: torch.nn.Module, config: Config, algorithm, device: torch.device):
    """The policy and the companions the algorithm asks for. With LoRA the EMA target is an EMA of
    the adapter tensors and the reference is the policy with adapters disabled: no model copies."""
    from popo.ema import Predictor
    from popo.lora import AdapterEMA, AdapterOff, is_peft
    from popo.update import Models

    models, lora = Models(policy=policy.train()), is_peft(policy)
    if algorithm.needs_target(config.algo):
        hidden = policy.config.hidden_size
        models.target = AdapterEMA(policy) if lora else frozen_copy(policy)
        models.predictor = Predictor(hidden, config.algo.predictor_width or hidden,
                                     config.algo.predictor_layers).to(device, policy.dtype)
    if algorithm.needs_reference(config.algo):
        models.reference = AdapterOff(policy) if lora else frozen_copy(policy)
    if config.model.offload_companions:
        for companion in (models.target, models.reference):
            if companion is not None:
                companion.to("cpu")
    return models


@contextmanager
def companions_on(models, device: torch.device, enabled: bool):
    """With `model.offload_companions`, move the EMA target and the reference to `device` for the
    block and back to CPU memory after it."""
    from popo.fsdp import is_sharded

    moved = ([m for m in (models.target, models.reference) if m is not None and not is_sharded(m)]
             if enabled else [])  # a sharded companion is offloaded by FSDP itself
    for m in moved:
        m.to(device)
    try:
        yield
    finally:
        for m in moved:
            m.to("cpu")


def shard_models(models, config: Config, plan) -> None:
    """Shard the policy and its full-copy companions with FSDP (`popo.fsdp`); the companions' shards
    stay in CPU memory with `model.offload_companions`. LoRA is not combined with FSDP."""
    from popo.fsdp import shard_
    from popo.lora import is_peft

    if is_peft(models.policy):
        raise SetupError("model.lora with FSDP is not supported: LoRA adapters are small, launch with a DDP "
                         "config (configs/accelerate/ddp-*.yaml) instead")
    shard_(models.policy, plan)
    for other in (models.target, models.reference):
        if other is not None:
            shard_(other, plan, offload=config.model.offload_companions or plan.offload_params)


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
