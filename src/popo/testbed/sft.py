"""Supervised warm-up of the testbed model, and the cache that lets a second run skip it.

The warm-up imitates the task's warm-up pairs (addition: scratchpads on an easier distribution than the
RL prompts, `popo.testbed.addition`; countdown: one solution drawn from all of each problem's solutions,
`popo.testbed.countdown_task`), with the loss on completion tokens only, AdamW, linear warmup then cosine
decay. The task also picks the tokenizer's alphabet, and its settings are part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer

CACHE_VERSION = 4
TestbedTask = Any
"""A testbed task (`popo.testbed.addition.AdditionTask` or `popo.testbed.countdown_task.CountdownTask`): `name`,
`alphabet`, `describe()`, `cache_fields()`, `verifier()`, the splits and `warmup_pairs(count, seed=)`."""


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]):
    """Right-padded (input_ids [B, L], attention_mask [B, L], labels [B, L]) with -100 on prompt tokens."""
    rows, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    return input_ids, attention_mask, label_ids


def supervised_warmup(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TestbedTask, *,
                      steps: int, batch_size: int, lr: float, seed: int = 0,
                      log: Callable[[str], None] | None = None) -> list[float]:
    """Train `model` in place on warm-up pairs; returns the loss of every step."""
    pairs = task.warmup_pairs(steps * batch_size, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warm) * max(
        0.05, 0.5 * (1 + torch.cos(torch.tensor(torch.pi * k / steps)).item())))
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        input_ids, attention_mask, labels = encode_pairs(
            tokenizer, pairs[step * batch_size:(step + 1) * batch_size])
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"warm-up step {step + 1}/{steps}  loss {loss.item():.4f}  "
                f"({time.perf_counter() - start:.0f}s)")
    model.eval()
    return losses


def cache_key(task: TestbedTask, spec: TinyModelSpec, steps: int, batch_size: int, lr: float,
              seed: int) -> str:
    blob = json.dumps([CACHE_VERSION, task.alphabet, task.cache_fields(), spec.__dict__, steps,
                       batch_size, lr, seed, torch.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def prepare_testbed(cache_dir: str | Path, task: TestbedTask, *, steps: int, batch_size: int, lr: float,
                    seed: int = 0, spec: TinyModelSpec | None = None,
                    log: Callable[[str], None] = print, rebuild: bool = False) -> Path:
    """Path of the warmed-up testbed model in `cache_dir`: the cached copy, else the copy popo ships for
    this configuration (`popo.testbed.shipped`), else built here and cached. `rebuild` builds it anew."""
    from popo.testbed.shipped import install

    spec = spec or TinyModelSpec()
    path = Path(cache_dir) / f"testbed-{cache_key(task, spec, steps, batch_size, lr, seed)}"
    if rebuild:
        path = path.with_name(path.name + "-rebuilt")
    elif (path / "config.json").is_file() and (path / "warmup.json").is_file():
        log(f"testbed: using cached warmed-up model {path}")
        return path
    elif install(path.name, path, log=log):
        return path
    log(f"testbed: building and warming up the tiny Qwen2 ({steps} steps x {batch_size}) -> {path}")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(task.alphabet)
    model = build_tiny_qwen2(tokenizer, spec, seed=seed)
    start = time.perf_counter()
    losses = supervised_warmup(model, tokenizer, task, steps=steps, batch_size=batch_size, lr=lr,
                               seed=seed, log=log)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "warmup.json").write_text(json.dumps(
        {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "task": task.cache_fields(),
         "seconds": round(time.perf_counter() - start, 1), "final_loss": losses[-1]}, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_pretrained(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
