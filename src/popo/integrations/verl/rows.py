"""A verl mini-batch as POPO trains on it: pure functions on the layout verl 0.9.1's trainer hands the actor
engine (`verl.workers.utils.padding.left_right_2_no_padding`), used by `engine.POPOFSDPEngine`.

That layout, per mini-batch of n rows on one data-parallel rank: ``input_ids`` and ``position_ids`` nested
(jagged) tensors, one row per sequence (its prompt then its response, no padding); ``prompts`` [n, P] left-
and ``responses`` [n, R] right-padded; ``response_mask`` [n, R]; ``advantages`` [n, R] (from the ``"popo"``
estimator: the row's POPO weight on each response token); scalar settings (``temperature``,
``use_dynamic_bsz``, ...) as non-tensor entries.

What this module answers:

- which rows are positive and the batch's global counts (`positive_rows`, `global_totals`): POPO's N+ and W
  summed over all ranks, so each rank's loss is its share of the one-process loss;
- the micro-batches of the positives (`micro_batches`) and the stand-in a rank runs when it has fewer
  (`idle_micro_batch`): a synthetic two-token row with zero weight, never a negative rollout;
- the policy's pooled features on the response tokens (`packed_hidden`, `response_hidden`), as popo's
  `popo.logprobs.completion_outputs` takes them (the final hidden state at each completion token);
- the per-row key of the target-feature noise (`content_keys`, `noise_seeds`): a hash of the row's tokens,
  so the draw is the same however rows are split into micro-batches or ranks;
- which groups carry a signal (`rows_with_signal`): popo's loss-table `group_has_signal`, per verl ``uid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from popo.algorithms import BatchTotals, get_algorithm
from popo.algo_config import AlgoConfig
from popo.distributed import Dist
from popo.integrations.verl.loss import row_credit
from popo.seeds import NOISE_STREAM, fmix32, row_seed, stream_seed

_MASK32 = 0xFFFFFFFF


def padded(t: Tensor) -> Tensor:
    """A [n, R] tensor as a regular one (verl may hand a jagged one)."""
    return t.to_padded_tensor(0) if t.is_nested else t


def positive_rows(data) -> tuple[Tensor, Tensor, Tensor]:
    """(credit [n], positive [n] bool, response mask [n, R] bool) of a mini-batch: a row's credit is its POPO
    weight (the estimator's advantage on its tokens); it is positive when the weight is > 0."""
    mask = padded(data["response_mask"]).bool()
    credit = row_credit(padded(data["advantages"]).float(), mask)
    return credit, credit > 0, mask


def global_totals(credit: Tensor, positive: Tensor, mask: Tensor, dist: Dist) -> BatchTotals:
    """The mini-batch's counts summed over the data-parallel ranks (one collective): rows, response tokens,
    positive tokens (N+) and positive weight (W), in float64 so the sums are exact."""
    rows, tokens, pos_tokens, weight = dist.sum_values(
        [mask.shape[0], float(mask.sum()), float(mask[positive].sum()), float(credit[positive].double().sum())])
    return BatchTotals(sequences=int(rows), tokens=int(tokens), positive_tokens=int(pos_tokens),
                       weight_sum=weight, max_length=mask.shape[1])


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


def content_keys(input_ids: Tensor) -> Tensor:
    """[n] int64 keys in [0, 2^32): a hash of each row's token ids and their positions (jagged [n, ~] input),
    so a row keeps its key wherever it lands. Identical rows share a key."""
    values = input_ids.values().to(torch.int64)
    offsets = input_ids.offsets().to(torch.int64)
    lengths = offsets.diff()
    row = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths)
    position = torch.arange(values.numel(), device=values.device) - offsets[:-1][row]
    token = fmix32((values * 0x9E3779B1) ^ fmix32(position * 0x85EBCA77 + 0x27D4EB2F))
    total = torch.zeros(lengths.numel(), dtype=torch.int64, device=values.device).index_add_(0, row, token)
    return fmix32((total & _MASK32) ^ fmix32(lengths))


def noise_seeds(keys: Tensor, seed: int, step: int) -> Tensor:
    """popo's per-row noise seeds (`popo.seeds.row_seed` of the step's noise stream) keyed by `keys`."""
    base = stream_seed(seed, step, NOISE_STREAM)
    return torch.tensor([row_seed(base, int(k)) for k in keys.tolist()], dtype=torch.int64)


def rows_with_signal(rewards: Tensor, uids: Sequence[Any], cfg: AlgoConfig) -> Tensor:
    """[n] bool: the rows whose group (verl ``uid``) can move the policy, by the loss table's
    `group_has_signal` for `cfg.name` (POPO: a group with at least one positive; an all-negative group has
    zero weight everywhere and adds nothing). Groups may differ in size and need not be adjacent."""
    n = rewards.shape[0]
    if len(uids) != n:
        raise ValueError(f"{len(uids)} uids for {n} rows")
    members: dict[Any, list[int]] = {}
    for row, uid in enumerate(uids):
        members.setdefault(uid, []).append(row)
    has_signal = get_algorithm(cfg.name).group_has_signal
    keep = torch.zeros(n, dtype=torch.bool)
    by_size: dict[int, list[list[int]]] = {}
    for group in members.values():
        by_size.setdefault(len(group), []).append(group)
    for groups in by_size.values():
        index = torch.tensor(groups)  # [B, G]
        keep[index] = has_signal(rewards[index], cfg).unsqueeze(1).expand_as(index)
    return keep
