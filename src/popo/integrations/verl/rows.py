"""A verl mini-batch as POPO trains on it: pure functions on the layout verl 0.9.1's trainer hands the actor
engine (`verl.workers.utils.padding.left_right_2_no_padding`), used by `engine.POPOFSDPEngine`.

That layout, per mini-batch of n rows on one data-parallel rank: ``input_ids`` and ``position_ids`` nested
(jagged) tensors, one row per sequence (its prompt then its response, no padding); ``prompts`` [n, P] left-
and ``responses`` [n, R] right-padded; ``response_mask`` [n, R]; ``advantages`` [n, R] (from the ``"popo"``
estimator: the row's POPO weight on each response token); scalar settings (``temperature``,
``use_dynamic_bsz``, ...) as non-tensor entries.

What this module answers:

- which rows are positive and their credit (`positive_rows`; the global counts are `popo.step_core.batch_totals`);
- the micro-batches of the positives (`micro_batches`) and the stand-in a rank runs when it has fewer
  (`idle_micro_batch`): a synthetic two-token row with zero weight, never a negative rollout;
- the policy's pooled features on the response tokens (`packed_hidden`, `response_hidden`), as popo's
  `popo.logprobs.completion_outputs` takes them (the final hidden state at each completion token).

The per-row key of the target-feature noise is `popo.seeds.content_noise_seeds` of the rows' tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from popo.logprobs import masked_mean


def padded(t: Tensor) -> Tensor:
    """A [n, R] tensor as a regular one (verl may hand a jagged one)."""
    return t.to_padded_tensor(0) if t.is_nested else t


def positive_rows(data) -> tuple[Tensor, Tensor, Tensor]:
    """(credit [n], positive [n] bool, response mask [n, R] bool) of a mini-batch: a row's credit is its POPO
    weight (the estimator's advantage on its tokens); it is positive when the weight is > 0."""
    mask = padded(data["response_mask"]).bool()
    credit = masked_mean(padded(data["advantages"]).float(), mask)  # the weight on each of the row's tokens
    return credit, credit > 0, mask


def micro_batches(data, *, dynamic: bool, max_tokens: int, rows: int) -> list:
    """This rank's micro-batches of `data` (no collective): with `dynamic`, verl's token-balanced split
    (`rearrange_micro_batches`, at most `max_tokens` sequence tokens each), else `rows` rows each in order."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.seqlen_balancing import rearrange_micro_batches

    n = data.batch_size[0]
    if n == 0:
        return []
    if dynamic:
        return rearrange_micro_batches(data, max_token_len=max_tokens, dp_group=None, same_micro_num_in_dp=False)[0]
    if rows < 1:
        raise ValueError(f"micro_batch_size_per_gpu must be >= 1, got {rows}")
    return [tu.index_select_tensor_dict(data, list(range(start, min(n, start + rows)))) for start in range(0, n, rows)]


def idle_micro_batch(like) -> Any:
    """A one-row micro-batch of two tokens (a prompt token and a response token, id 0) with zero weight, in
    `like`'s layout and with its scalar settings: what a rank runs to join the other ranks' collectives when
    it has no positive rows left. Its loss is an exact zero, so it adds nothing to any gradient."""
    from tensordict import NonTensorData, TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    zero = torch.zeros(1, 1, dtype=torch.long)
    data = left_right_2_no_padding(TensorDict({
        "prompts": zero, "responses": zero.clone(), "input_ids": torch.zeros(1, 2, dtype=torch.long),
        "attention_mask": torch.ones(1, 2, dtype=torch.long), "position_ids": torch.arange(2)[None],
        "response_mask": torch.ones(1, 1, dtype=torch.long), "advantages": torch.zeros(1, 1),
        "old_log_probs": torch.zeros(1, 1),
    }, batch_size=[1]))
    for key in like.keys():
        value = like.get(key)
        if key not in data.keys() and isinstance(value, NonTensorData):  # scalar settings, not per-row stacks
            tu.assign_non_tensor_data(data, key, value.data)
    temperature = like.get("temperature", None)
    if isinstance(temperature, Tensor):  # a per-row temperature: the first row's
        data["temperature"] = temperature[:1]
    return data


def packed_hidden(hidden: Tensor, micro_batch, *, remove_padding: bool, pad_size: int = 0) -> Tensor:
    """The decoder's last hidden states as one [total tokens, H] tensor in ``input_ids.values()`` order:
    from the packed [1, tokens + pad, H] of verl's remove-padding forward (trailing `pad_size` dropped) or
    from the padded [n, L, H] of its padded forward."""
    lengths = micro_batch["input_ids"].offsets().diff().tolist()
    if remove_padding:
        flat = hidden.squeeze(0)
        return flat[: flat.shape[0] - pad_size] if pad_size else flat
    return torch.cat([hidden[row, :length] for row, length in enumerate(lengths)], dim=0)


def response_hidden(packed: Tensor, micro_batch) -> Tensor:
    """[n, R, H]: the hidden state *at* each response token (popo's completion features), zero-padded.
    verl's `no_padding_2_padding` takes the position before each token (where its log-prob is read);
    shifting the packed states by one first gives the token's own position."""
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(torch.roll(packed, shifts=-1, dims=0), micro_batch)
