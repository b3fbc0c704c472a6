"""Rollout engine on a `transformers` causal LM (KV cache, batched, seeded; CPU and CUDA).

Sampling is done by `popo.rollout.sampling` (Gumbel-max with per-row counter-based noise), which also
records the log-prob of each sampled token under the distribution it was drawn from (temperature and
top-p applied), so POPO's weights need no extra forward pass and no [rows, steps, vocab] score tensor is
kept. By default the engine decodes with its own loop (shared prompt prefill, finished rows leave the
batch; see `HFEngine`), measured against a bare `generate` in benchmarks/generation.py; `decode=
"generate-static"` samples through `generate` with a static KV cache (compiled on CUDA), the same draws.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import get_args

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from popo.config import HFDecode
from popo.rollout.base import Rollouts, SamplingParams
from popo.rollout.decoder import LeanDecoder
from popo.rollout.sampling import SeededSampler, draw_scores, seeded_draw
from popo.seeds import row_seed, row_seeds, vocab_keys

DECODE_PATHS = get_args(HFDecode)


class HFEngine:
    """Samples with the policy model itself; `max_batch_rollouts` bounds the rows per `generate` call.

    With `share_prompt_prefill` (the default) each prompt's tokens but the last go through the model once,
    not once per rollout: their KV cache is computed for the distinct prompts and repeated for the
    prompt's `n` rows, and decoding starts from it (it then runs only the last prompt token per row).

    `decode` picks how tokens are drawn; every path takes the same draw (`seeded_draw`, which depends only
    on the row's seed and position), so they sample the same tokens up to float rounding:

    - "loop" (the default, on every device): the engine's own decoding loop (`_decode`). A row that has
      produced end-of-sequence leaves the batch and its KV cache, so later steps only compute the rows
      still running. It applies only temperature and top-p, not other processors of the model's
      `generation_config`. `drop_finished_rows` is True exactly on this path (setting it False picks
      "generate", its older spelling).
    - "generate": `generate` with a dynamic KV cache and `SeededSampler` as a logits processor; it keeps
      computing finished rows (and padding them) until the longest one ends.
    - "generate-static": the same with a static KV cache, whose decoding step `transformers` compiles
      (with CUDA graphs) on CUDA; there the sampler's draw is compiled too (`torch.compile` of
      `draw_scores`, once per engine). No shared prompt prefill on this path.

    Which path is fastest on a GPU is measured by benchmarks/gpu/decode.py; docs/gpu-check.md says why
    the default is what it is.

    With `lean_decode` (the default) the loop steps with `LeanDecoder` where it supports the model
    (Llama-family architectures; see `popo.rollout.decoder`): the same function with far less overhead
    per token, and the same samples. Otherwise each step is a call of the model's own forward.
    """

    owns_weights = False  # samples with the policy module itself: nothing to push after an update

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 max_prompt_tokens: int = 1024, max_batch_rollouts: int = 256, share_prompt_prefill: bool = True,
                 drop_finished_rows: bool = True, lean_decode: bool = True, decode: str = "loop"):
        if decode not in DECODE_PATHS:
            raise ValueError(f"decode={decode!r}: expected one of {DECODE_PATHS}")
        self.model, self.tokenizer = model, tokenizer
        self.lean_decode = lean_decode
        self.decode = "generate" if decode == "loop" and not drop_finished_rows else decode
        self.max_prompt_tokens, self.max_batch_rollouts = max_prompt_tokens, max_batch_rollouts
        self.share_prompt_prefill = share_prompt_prefill
        self._prompt_cache: dict[str, list[int]] = {}
        self._compiled_draw = None  # torch.compile(draw_scores), made at the first static-cache call on CUDA

    @property
    def drop_finished_rows(self) -> bool:
        """Whether ended rows leave the batch: the engine's own loop (`decode == "loop"`)."""
        return self.decode == "loop"

    @drop_finished_rows.setter
    def drop_finished_rows(self, value: bool) -> None:
        self.decode = "loop" if value else "generate"

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

    def push_weights(self, policy: torch.nn.Module) -> None:
        """Nothing to do: the engine decodes with the policy module, whose weights are always current."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, *,
                 seed: int | None = None, prompt_seeds: Sequence[int] | None = None) -> Rollouts:
        """`n` rollouts per prompt. Sample j of prompt i is drawn with the seed `row_seed(s_i, j)`, where
        s_i is `prompt_seeds[i]` or else `row_seed(seed, i)`: a rollout does not depend on which other
        prompts share its batch or process (see `popo.rollout.sampling`)."""
        encoded = [self._encode(p) for p in prompts]
        if prompt_seeds is None:
            base = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
            prompt_seeds = [row_seed(base, i) for i in range(len(prompts))]
        if len(prompt_seeds) != len(prompts):
            raise ValueError(f"{len(prompt_seeds)} prompt seeds for {len(prompts)} prompts")
        per_call = max(1, self.max_batch_rollouts // n)
        parts: list[Rollouts] = []
        for start in range(0, len(encoded), per_call):
            seeds = sample_seeds(prompt_seeds[start:start + per_call], n)  # [row_seed(s, j) for s, j]
            parts.append(self._generate_batch(encoded[start:start + per_call], n, sampling, seeds))
        return Rollouts.concat(parts, pad_id=self.tokenizer.pad_token_id)

    def _generate_batch(self, encoded: list[list[int]], n: int, sampling: SamplingParams,
                        seeds: torch.Tensor) -> Rollouts:
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in encoded)
        prompt_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
        prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded],
                                   device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            seed_tensor = seeds.to(device)  # [N]
            limit = sampling.max_new_tokens
            lean = self.lean_decode and self.drop_finished_rows and LeanDecoder.supports(self.model) is None
            if lean:
                stepper, logits = self._lean_prompt(prompt_ids, prompt_mask, n, limit)
            prefix = None
            if not lean and self.share_prompt_prefill and self.decode != "generate-static":
                prefix = self._prefix_cache(prompt_ids, prompt_mask, n)
            prompt_ids = prompt_ids.repeat_interleave(n, dim=0)  # [N, P]
            prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # [N, P]
            if not lean and self.drop_finished_rows:
                stepper, logits = self._model_prompt(prompt_ids, prompt_mask, prefix, limit)
            if self.drop_finished_rows:
                completion_ids, logprobs = self._decode(stepper, logits, seed_tensor, sampling)
            else:
                sampler = SeededSampler(seed_tensor, sampling.temperature, sampling.top_p, prompt_width=width,
                                        draw=self._draw(device))
                cache = {"cache_implementation": "static"} if self.decode == "generate-static" else _cache_kwarg(prefix)
                out = self.model.generate(
                    input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=sampling.max_new_tokens,
                    pad_token_id=pad_id, eos_token_id=eos_id, return_dict_in_generate=True, use_cache=True,
                    do_sample=False, logits_processor=LogitsProcessorList([sampler]), **cache)
                completion_ids = out.sequences[:, width:]  # [N, C]
                logprobs = torch.stack(sampler.logprobs, dim=1)[:, : completion_ids.shape[1]]  # [N, C]
        finally:  # an error (e.g. out of memory, which the trainer may retry) must not leave eval mode on
            self.model.train(was_training)
        is_eos = completion_ids == eos_id
        eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # eos tokens strictly before t
        completion_mask = eos_before == 0  # [N, C] up to and including the first eos
        logprobs = torch.where(completion_mask, logprobs, 0.0)
        truncated = ~is_eos.any(dim=1)
        texts = self.tokenizer.batch_decode(
            torch.where(completion_mask, completion_ids, pad_id), skip_special_tokens=True)
        return Rollouts(prompt_ids, prompt_mask.bool(), completion_ids, completion_mask, logprobs,
                        truncated, texts, group_size=n)

    def _draw(self, device: torch.device):
        """What `SeededSampler` calls: `draw_scores`, compiled on the static-cache path on CUDA (a few fused
        kernels where the eager ops make some twenty passes over [rows, vocab]; the same function up to float
        rounding)."""
        if self.decode != "generate-static" or device.type != "cuda":
            return draw_scores
        if self._compiled_draw is None:
            self._compiled_draw = torch.compile(draw_scores)
        return self._compiled_draw

    def _lean_prompt(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, limit: int):
        """`LeanDecoder` over the B distinct prompts [B, P]: all prompt columns but the last run once per
        prompt (`share_prompt_prefill`) or once per row; then the rows are repeated n times and the last
        prompt column runs as a decoding step. Returns (decoder, logits [B*n, V] of the first token)."""
        rows = torch.arange(prompt_ids.shape[0], device=prompt_ids.device).repeat_interleave(n)  # [N]
        if not self.share_prompt_prefill:
            prompt_ids, prompt_mask, rows = prompt_ids[rows], prompt_mask[rows], None
        decoder = LeanDecoder(self.model, prompt_mask, limit)
        if prompt_ids.shape[1] > 1:
            decoder.prefill(prompt_ids[:, :-1])
        last = prompt_ids[:, -1]
        if rows is not None:
            decoder.select(rows)
            last = last[rows]
        return decoder, decoder.step(last)

    def _model_prompt(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cache, limit: int):
        """The model's own forward over the prompt rows [N, P] (only their last column when `cache`
        holds the others); returns (a `_ModelStepper` for the tokens after it, logits [N, V])."""
        positions = (prompt_mask.long().cumsum(-1) - 1).clamp_min(0)  # [N, P]
        inputs, input_positions = prompt_ids, positions
        if cache is not None:
            inputs, input_positions = prompt_ids[:, -1:], positions[:, -1:]
        out = self.model(input_ids=inputs, attention_mask=prompt_mask, position_ids=input_positions,
                         use_cache=True, logits_to_keep=1, **_cache_kwarg(cache))
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return _ModelStepper(self.model, cache, prompt_mask, positions[:, -1], limit), out.logits[:, -1]

    def _decode(self, stepper, logits: torch.Tensor, seeds: torch.Tensor,
                sampling: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample up to `max_new_tokens` per row from the first-token `logits` [N, V], then one `stepper`
        step per token (`LeanDecoder` or `_ModelStepper`). Ended rows leave the batch in chunks (see
        `_should_compact`). Returns (completion ids [N, C] padded after eos, sampled-token log-probs
        [N, C], 0 there)."""
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        (n_rows, vocab), limit, device = logits.shape, sampling.max_new_tokens, logits.device
        tokens = torch.full((n_rows, limit), pad_id, dtype=torch.long, device=device)  # [N, C]
        logprobs = torch.zeros(n_rows, limit, dtype=torch.float32, device=device)  # [N, C]
        keys = vocab_keys(vocab, device)
        running = torch.arange(n_rows, device=device)  # [R] row index of each running row
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)  # [R] ended, not yet dropped
        row_tokens, row_logprobs = tokens.clone(), logprobs.clone()  # [R, C] the running rows' samples
        steps = 0
        for t in range(limit):
            choice, logprob = seeded_draw(logits, seeds, t, sampling.temperature, sampling.top_p, keys)  # [R], [R]
            row_tokens[:, t] = choice.masked_fill(done, pad_id)
            row_logprobs[:, t] = logprob.masked_fill(done, 0.0)
            steps = t + 1
            done = done | (choice == eos_id)
            finished = int(done.sum())
            if finished == len(done):
                break
            if _should_compact(finished, len(done)):
                ended = done.nonzero().squeeze(1)
                tokens[running[ended]], logprobs[running[ended]] = row_tokens[ended], row_logprobs[ended]
                keep = (~done).nonzero().squeeze(1)  # [R']
                stepper.select(keep)
                running, seeds, choice, done = running[keep], seeds[keep], choice[keep], done[keep]
                row_tokens, row_logprobs = row_tokens[keep], row_logprobs[keep]
            logits = stepper.step(choice)
        tokens[running], logprobs[running] = row_tokens, row_logprobs
        return tokens[:, :steps], logprobs[:, :steps]

    def _prefix_cache(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int):
        """KV cache of the first P-1 prompt columns for the B distinct prompts ([B, P] left-padded), each
        repeated for its n rows; None when there is nothing to share."""
        if n == 1 or prompt_ids.shape[1] < 2:
            return None
        position_ids = (prompt_mask.long().cumsum(-1) - 1).clamp_min(0)  # [B, P], as `generate` numbers them
        out = self.model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1],
                         position_ids=position_ids[:, :-1], use_cache=True, logits_to_keep=1)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # transformers 5 / 4
        cache.batch_repeat_interleave(n)  # [B, ...] -> [B*n, ...], rows ordered prompt by prompt
        return cache


def _should_compact(finished: int, rows: int) -> bool:
    """Whether to drop the `finished` ended rows of `rows` from the batch now. Dropping costs a copy of the
    KV cache and keeping costs their compute: rows leave once an eighth of the batch has ended. Below four
    running rows they leave at once, because a matrix product's rounding for rows 1-3 of a batch depends
    on the batch size (CPU BLAS switches kernels there), and the samples must not depend on the schedule."""
    return finished > 0 and (8 * finished >= rows or rows - finished <= 3)


class _ModelStepper:
    """`LeanDecoder`'s interface on the model's own forward (any architecture): a growing KV cache."""

    def __init__(self, model, cache, key_mask: torch.Tensor, positions: torch.Tensor, limit: int):
        self.model, self.cache = model, cache
        rows, width = key_mask.shape
        self.mask = key_mask.new_ones(rows, width + limit)  # [R, P + C], sliced per step: no reallocation
        self.mask[:, :width] = key_mask
        self.positions, self.used = positions.clone(), width

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask, self.positions = self.mask[keep], self.positions[keep]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.positions += 1
        self.used += 1
        out = self.model(input_ids=tokens.unsqueeze(1), attention_mask=self.mask[:, :self.used],
                         position_ids=self.positions.unsqueeze(1), use_cache=True, logits_to_keep=1,
                         **_cache_kwarg(self.cache))
        self.cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out.logits[:, -1]


def sample_seeds(prompt_seeds: Sequence[int], n: int) -> torch.Tensor:
    """`row_seed(s, j)` for every prompt seed s and sample index j < n, as one int64 tensor [len * n]
    (rows prompt by prompt), in one vectorised pass (`row_seeds`) instead of a tensor round trip per row."""
    base = torch.tensor([s & 0xFFFFFFFF for s in prompt_seeds], dtype=torch.int64)  # [B]: any Python int fits
    return row_seeds(base.unsqueeze(1), torch.arange(n).unsqueeze(0)).flatten()  # [B * n]


def _cache_kwarg(cache) -> dict:
    """The keyword by which the installed transformers' forward and `generate` take a KV cache: `cache` in
    recent releases, `past_key_values` before (5.10 still), read off a reference decoder's signature (a
    keyword the forward does not name would be swallowed by its `**kwargs`, and decoding would ignore it)."""
    if cache is None:
        return {}
    from transformers import LlamaModel

    return {"cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values": cache}
