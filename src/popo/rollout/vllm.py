"""Rollout engine on vLLM (extra `popo[vllm]`), behind the same interface as `HFEngine`.

Selected only by `rollout.engine=vllm`; nothing imports vLLM unless that engine is built. Two modes:

- `colocate`: a `vllm.LLM` in the training process, sharing the GPU. After each policy update the trainer
  calls `push_weights(policy)`, which loads the new weights into vLLM's model in place; between rollouts
  the engine sleeps (`LLM.sleep(level=1)`: weights offloaded, KV cache freed) so training gets the memory.
- `server`: requests to a separately started OpenAI-compatible vLLM server (`vllm serve`). vLLM's server
  can swap LoRA adapters at run time (`/v1/load_lora_adapter`, with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`),
  so server mode trains LoRA adapters: `push_weights` saves the adapter to `sync_dir` and loads it under a
  new name; full-weight training needs `colocate`.

Seeds: each prompt gets its own seed (vLLM's per-request `seed`), so a rollout does not depend on the
other prompts of its batch or process, as with `HFEngine`. vLLM's stream for a seed differs from
`HFEngine`'s Gumbel noise, so the two engines draw different (equally distributed) samples.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch

from popo.lora import is_peft, plain_weights
from popo.rollout.base import Rollouts, SamplingParams
from popo.seeds import row_seed


def _load_weights(worker, weights) -> None:  # runs inside vLLM's worker (collective_rpc)
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    """`generate` returns `Rollouts` with the same fields and conventions as `HFEngine`."""

    owns_weights = True  # vLLM holds its own copy of the weights: `push_weights` after every update

    def __init__(self, model_path: str, tokenizer, *, mode: str = "colocate", server_url: str = "",
                 gpu_memory_utilization: float = 0.3, dtype: str = "bfloat16", sleep: bool = True,
                 max_model_len: int | None = None, sync_dir: str = "", max_prompt_tokens: int = 1024):
        self.tokenizer, self.mode, self.sleep_between = tokenizer, mode, sleep
        self.max_prompt_tokens, self.model_name = max_prompt_tokens, model_path
        self.server_url, self.sync_dir, self.version = server_url.rstrip("/"), sync_dir, 0
        self.llm = None
        if mode == "colocate":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights loaded in this process
            from vllm import LLM  # import-guarded: only `rollout.engine=vllm` reaches this

            self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                           enable_sleep_mode=sleep, max_model_len=max_model_len)
            if sleep:
                self.llm.sleep(level=1)
        elif mode != "server":
            raise ValueError(f"rollout.vllm_mode must be 'colocate' or 'server', not {mode!r}")

    # ------------------------------------------------------------------ weights
    def push_weights(self, policy: torch.nn.Module) -> None:
        """Make the engine sample from `policy`'s current weights."""
        if self.mode == "colocate":
            if self.sleep_between:
                self.llm.wake_up(tags=["weights"])
            with plain_weights(policy) as named:  # vLLM holds plain weights (LoRA adapters merged in)
                self.llm.collective_rpc(_load_weights, args=(named,))
            if self.sleep_between:
                self.llm.sleep(level=1)
            return
        if not is_peft(policy):
            raise RuntimeError("vLLM server mode syncs LoRA adapters only (set model.lora.r > 0), "
                               "or use rollout.vllm_mode=colocate")
        self.version += 1
        name = f"popo-step-{self.version}"
        folder = Path(self.sync_dir) / name
        policy.save_pretrained(folder)
        self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder.resolve())})
        self.model_name = name

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, *,
                 seed: int | None = None, prompt_seeds: Sequence[int] | None = None) -> Rollouts:
        if prompt_seeds is None:
            base = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
            prompt_seeds = [row_seed(base, i) for i in range(len(prompts))]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        for ids, prompt in zip(encoded, prompts):
            if len(ids) > self.max_prompt_tokens:
                raise ValueError(f"prompt of {len(ids)} tokens exceeds max_prompt_tokens="
                                 f"{self.max_prompt_tokens}: {prompt[:60]!r}...")
        samples = self._sample(encoded, n, sampling, prompt_seeds)  # per prompt: n (token ids, logprobs)
        return build_rollouts(encoded, samples, n, pad_id=self.tokenizer.pad_token_id,
                              eos_id=self.tokenizer.eos_token_id, max_new_tokens=sampling.max_new_tokens,
                              decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))

    def _sample(self, encoded, n, sampling, prompt_seeds) -> list[list[tuple[list[int], list[float]]]]:
        greedy = sampling.temperature <= 0
        options = dict(n=n, max_tokens=sampling.max_new_tokens, temperature=0.0 if greedy else sampling.temperature,
                       top_p=1.0 if greedy else sampling.top_p, logprobs=0)
        if self.mode == "colocate":
            from vllm import SamplingParams as VSampling, TokensPrompt

            if self.sleep_between:
                self.llm.wake_up()
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in encoded]
            params = [VSampling(seed=s, **options) for s in prompt_seeds]
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            if self.sleep_between:
                self.llm.sleep(level=1)
            return [[(list(c.token_ids), [next(iter(d.values())).logprob for d in c.logprobs])
                     for c in out.outputs] for out in outputs]
        results = []
        for ids, s in zip(encoded, prompt_seeds):
            body = {"model": self.model_name, "prompt": ids, "seed": s, "return_tokens_as_token_ids": True,
                    **{k: v for k, v in options.items() if k != "logprobs"}, "logprobs": 1}
            reply = self._post("/v1/completions", body)
            results.append([_parse_choice(c) for c in sorted(reply["choices"], key=lambda c: c["index"])])
        return results

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.server_url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            text = reply.read().decode()
        return json.loads(text) if text.strip().startswith("{") else {}


def _parse_choice(choice: dict) -> tuple[list[int], list[float]]:
    """Token ids and sampled-token log-probs of one OpenAI completions choice (`token_id:N` strings)."""
    lp = choice["logprobs"]
    ids = [int(t.split(":", 1)[1]) for t in lp["tokens"]]
    return ids, [float(x) for x in lp["token_logprobs"]]


def build_rollouts(encoded: list[list[int]], samples, n: int, *, pad_id: int, eos_id: int,
                   max_new_tokens: int, decode) -> Rollouts:
    """Pack per-prompt samples [(completion ids, sampled-token log-probs)] * n into `Rollouts`
    (left-padded prompts, right-padded completions, mask up to and including the first eos)."""
    width = max(len(ids) for ids in encoded)
    rows = [(ids, c) for ids, group in zip(encoded, samples) for c in group]
    longest = max(1, max(len(c[0]) for _, c in rows))
    N = len(rows)
    prompt_ids = torch.full((N, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(N, width, dtype=torch.bool)
    completion_ids = torch.full((N, longest), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(N, longest, dtype=torch.bool)
    logprobs = torch.zeros(N, longest)
    truncated = torch.ones(N, dtype=torch.bool)
    texts = []
    for r, (ids, (tokens, lps)) in enumerate(rows):
        prompt_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        prompt_mask[r, width - len(ids):] = True
        if eos_id in tokens:
            tokens, lps = tokens[: tokens.index(eos_id) + 1], lps[: tokens.index(eos_id) + 1]
            truncated[r] = False
        if tokens:
            completion_ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            completion_mask[r, : len(tokens)] = True
            logprobs[r, : len(tokens)] = torch.tensor(lps, dtype=torch.float32)
        truncated[r] &= len(tokens) >= max_new_tokens
        texts.append(decode(tokens))
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, logprobs, truncated, texts,
                    group_size=n)
