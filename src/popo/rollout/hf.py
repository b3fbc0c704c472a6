"""Rollout engine on `transformers` `generate` (KV cache, batched, seeded; CPU and CUDA).

The log-prob of each sampled token is read from the processed scores `generate` already computes
(temperature and top-p applied), so POPO's weights need no extra forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from popo.rollout.base import Rollouts, SamplingParams


class HFEngine:
    """Samples with the policy model itself; `max_batch_rollouts` bounds the rows per `generate` call."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 max_prompt_tokens: int = 1024, max_batch_rollouts: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.max_prompt_tokens, self.max_batch_rollouts = max_prompt_tokens, max_batch_rollouts
        self._prompt_cache: dict[str, list[int]] = {}

    def _encode(self, prompt: str) -> list[int]:
        ids = self._prompt_cache.get(prompt)
        if ids is None:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_tokens:
                raise ValueError(f"prompt of {len(ids)} tokens exceeds max_prompt_tokens="
                                 f"{self.max_prompt_tokens}: {prompt[:60]!r}...")
            if len(self._prompt_cache) < 100_000:
                self._prompt_cache[prompt] = ids
        return ids

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, *,
                 seed: int | None = None) -> Rollouts:
        encoded = [self._encode(p) for p in prompts]
        per_call = max(1, self.max_batch_rollouts // n)
        parts: list[Rollouts] = []
        with torch.random.fork_rng(devices=self._cuda_devices()):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(encoded), per_call):
                parts.append(self._generate_batch(encoded[start:start + per_call], n, sampling))
        return concat_rollouts(parts, pad_id=self.tokenizer.pad_token_id)

    def _cuda_devices(self) -> list[int]:
        device = next(self.model.parameters()).device
        return [device.index or 0] if device.type == "cuda" else []

    def _generate_batch(self, encoded: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts:
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in encoded)
        prompt_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
        prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded],
                                   device=device)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)  # [N, P]
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # [N, P]
        greedy = sampling.temperature <= 0
        options = dict(do_sample=False) if greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad_id, eos_token_id=eos_id, return_dict_in_generate=True,
            output_scores=True, use_cache=True, **options)
        self.model.train(was_training)
        completion_ids = out.sequences[:, width:]  # [N, C]
        scores = torch.stack(out.scores, dim=1).float()  # [N, C, V]
        logprobs = scores.log_softmax(dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        is_eos = completion_ids == eos_id
        eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # eos tokens strictly before t
        completion_mask = eos_before == 0  # [N, C] up to and including the first eos
        logprobs = torch.where(completion_mask, logprobs, 0.0)
        truncated = ~is_eos.any(dim=1)
        texts = self.tokenizer.batch_decode(
            torch.where(completion_mask, completion_ids, pad_id), skip_special_tokens=True)
        return Rollouts(prompt_ids, prompt_mask.bool(), completion_ids, completion_mask, logprobs,
                        truncated, texts, group_size=n)


def concat_rollouts(parts: list[Rollouts], *, pad_id: int) -> Rollouts:
    """Join batches row-wise, re-padding prompts on the left and completions on the right."""
    if len(parts) == 1:
        return parts[0]
    width_p = max(p.prompt_ids.shape[1] for p in parts)
    width_c = max(p.completion_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

    return Rollouts(
        prompt_ids=torch.cat([pad(p.prompt_ids, width_p, pad_id, True) for p in parts]),
        prompt_mask=torch.cat([pad(p.prompt_mask, width_p, False, True) for p in parts]),
        completion_ids=torch.cat([pad(p.completion_ids, width_c, pad_id, False) for p in parts]),
        completion_mask=torch.cat([pad(p.completion_mask, width_c, False, False) for p in parts]),
        sampling_logprobs=torch.cat([pad(p.sampling_logprobs, width_c, 0.0, False) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        texts=[t for p in parts for t in p.texts],
        group_size=parts[0].group_size,
    )
