"""Loading the policy a configuration names: where its weights are (`resolve_model_path`: a local folder, a
hub id, or the testbed model, built on first use), the model and tokenizer themselves (`load_policy`, with a
LoRA checkpoint merged and a LoRA adapter added when asked), and a fast failure when a hub model cannot be
fetched (`check_hub_reachable`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from popo.config import Config
from popo.data.prepare import testbed_task
from popo.errors import SetupError


def resolve_model_path(config: Config, log: Callable[[str], None] = print, *, rebuild: bool = False) -> str:
    """A local folder or hub id; `testbed` is the warmed-up tiny model (cached, shipped, or built here;
    `rebuild` builds it anew into `<cache>/testbed-<key>-rebuilt`)."""
    if config.model.name == "testbed":
        from popo.testbed.sft import prepare_testbed

        tb = config.testbed
        path = prepare_testbed(tb.cache_dir, testbed_task(config), steps=tb.warmup_steps,
                               batch_size=tb.warmup_batch, lr=tb.warmup_lr, log=log, rebuild=rebuild)
        return str(Path(path).resolve())  # absolute: a LoRA checkpoint records it as its base model
    name = config.model.name
    folder = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or folder.exists() or name.count("/") > 1
    if not looks_local:
        return name  # a hub id
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise SetupError(f"model path not found (no config.json or adapter_config.json in it): {name}")
    return str(folder.resolve())


def load_policy(path: str, config: Config, device: torch.device):
    """The model and tokenizer at `path` (a folder or hub id) on `device`, in `model.dtype`: a LoRA checkpoint
    merged into its base, a fresh LoRA adapter added when `model.lora.r` > 0; the tokenizer pads on the left."""
    dtype = getattr(torch, config.model.dtype)
    kwargs = {"dtype": dtype}
    if config.model.attn_implementation:
        kwargs["attn_implementation"] = config.model.attn_implementation
    if not Path(path).exists():
        check_hub_reachable(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with every_rank_reads_weights():
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


@contextmanager
def every_rank_reads_weights() -> Iterator[None]:
    """`from_pretrained` with accelerate's CPU-RAM-efficient FSDP loading turned off for the block.

    `accelerate launch` with FSDP sets FSDP_CPU_RAM_EFFICIENT_LOADING=true by default; with a process group
    up, `transformers` then treats ranks other than local rank 0 as placeholders for accelerate's
    `sync_module_states` broadcast to fill (5.10 sets all their parameters and buffers to zeros; later
    releases only their non-persistent buffers). popo shards with
    `fully_shard` itself (`popo.fsdp.shard_`): each rank keeps its slice of its own copy and nothing is
    broadcast, so every rank must read the real weights (half of every sharded tensor was zeros otherwise)."""
    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def check_hub_reachable(repo_id: str, timeout_s: float = 3.0) -> None:
    """Fail at once, with the fix in the message, when `repo_id` is not in the local Hugging Face cache and
    the hub cannot be reached (otherwise `from_pretrained` retries for about a minute before failing)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or isinstance(
            try_to_load_from_cache(repo_id, "config.json"), str):
        return  # offline mode fails fast by itself; a cached model needs no network
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # a direct probe says nothing about a proxied connection
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
    except OSError:
        raise SetupError(f"model {repo_id!r} is not a local folder, not in the Hugging Face cache, and the hub "
                         f"({endpoint.hostname}) cannot be reached: pass a local folder as model.name, or download "
                         "it where there is network (set HF_HUB_OFFLINE=1 to skip this check)") from None
