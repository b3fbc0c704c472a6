"""The rollout engine a configuration names (`make_engine`): popo's own HF engine, or vLLM."""

from __future__ import annotations

from pathlib import Path

import torch

from popo.config import Config
from popo.rollout.base import RolloutEngine


def make_engine(config: Config, policy: torch.nn.Module, tokenizer, model_path: str) -> RolloutEngine:
    """The rollout engine named by `rollout.engine`."""
    r = config.rollout
    if r.engine == "vllm":
        from popo.rollout.vllm import VLLMEngine

        return VLLMEngine(model_path, tokenizer, mode=r.vllm_mode, server_url=r.vllm_server_url,
                          gpu_memory_utilization=r.vllm_gpu_memory_utilization, dtype=config.model.dtype,
                          sync_dir=str(Path(config.train.out_dir) / "vllm-sync"),
                          max_prompt_tokens=config.data.max_prompt_tokens)
    from popo.rollout.hf import HFEngine

    return HFEngine(policy, tokenizer, max_prompt_tokens=config.data.max_prompt_tokens,
                    max_batch_rollouts=r.max_batch_rollouts, lean_decode=r.lean_decode, decode=r.hf_decode)
