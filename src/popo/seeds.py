"""Every seed and random stream of a run, in one place: counter-based hashing, so that a draw depends only on
its own keys (seed, step, stream, row, position), never on generator state or on which rows share a batch.

- `stream_seed(seed, step, stream)`: the seed of one random stream of one training step. A resumed run draws
  what an uninterrupted one would, and no stream's draws shift another's.
- `row_seed(seed, *keys)`: a 32-bit seed per row (prompt, sample, ...) from a stream's seed (`row_seeds`: the
  same on tensors, elementwise); `sample_seed`, `noise_seed` and `step_noise_seeds` (a rank's rows of one
  step) name the ones a training step uses; `content_noise_seeds` keys the same noise by each row's tokens
  where rows have no position in a global batch (verl's engine).
- The streams: `SAMPLING_STREAM` (a step's rollouts), `NOISE_STREAM` (POPO's per-row target-feature noise),
  `REFILL_STREAM` (dynamic sampling's fresh prompts) and `EVAL_STREAM` (a run's evaluation samples). Stream 2
  was the update's generator, whose draws nothing used; its number is not reused.
- `counter_uniform` / `normal_noise`: uniform and standard normal draws as pure functions of (row seed,
  position, column), the basis of the rollout sampler (`popo.rollout.sampling`) and of the target noise. The
  position may be a tensor: no value then reaches Python, so the draw can run inside a compiled graph.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

SAMPLING_STREAM, EVAL_STREAM, NOISE_STREAM, REFILL_STREAM = 1, 3, 4, 5

_MASK32 = 0xFFFFFFFF


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2^32)."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32  # int64 products wrap; the low 32 bits stay exact
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def _fmix32_int(h: int) -> int:
    """`fmix32` on a Python integer (the same values, without a tensor round trip)."""
    h &= _MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def row_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from `seed` and integer keys (e.g. prompt index, sample index)."""
    h = seed & _MASK32
    for key in keys:
        if not isinstance(key, int):
            raise TypeError(f"row_seed keys must be integers, got {key!r}")
        h = _fmix32_int(h ^ _fmix32_int((key * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    return h


def row_seeds(seeds: torch.Tensor, *keys: torch.Tensor) -> torch.Tensor:
    """`row_seed` elementwise on integer tensors (broadcast together; int64 out): the same values in one pass.
    Products wrap modulo 2^64 in int64 where Python's do not, which leaves the low 32 bits, all that is kept,
    unchanged; so do negative values under `& 0xFFFFFFFF`."""
    h = seeds.to(torch.int64) & _MASK32
    for key in keys:
        h = fmix32(h ^ fmix32((key.to(torch.int64) * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    return h


def stream_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one random stream (sampling, dropout-free noise, evaluation, ...) of one training step,
    independent of everything drawn before it: a resumed run draws what an uninterrupted one would."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


def sample_seed(seed: int, step: int, position: int) -> int:
    """The seed of the rollouts of the prompt at `position` in step `step`'s batch (sample j of it:
    `row_seed(sample_seed(...), j)`, as the rollout engines derive it)."""
    return row_seed(stream_seed(seed, step, SAMPLING_STREAM), position)


def noise_seed(seed: int, step: int, row: int) -> int:
    """The key of POPO's target-feature noise for row `row` (prompt position x group size + sample) of step
    `step`: the same however rows are split into micro-batches or processes."""
    return row_seed(stream_seed(seed, step, NOISE_STREAM), row)


def step_noise_seeds(seed: int, step: int, positions: Sequence[int], group_size: int, device=None) -> torch.Tensor:
    """`noise_seed` of every row of the prompts at `positions` in step `step`'s batch [len(positions) * G]
    (int64), prompt by prompt, `group_size` rows each: a rank's share of the step's noise keys."""
    return torch.tensor([noise_seed(seed, step, p * group_size + j) for p in positions for j in range(group_size)],
                        device=device)


def content_noise_seeds(tokens: torch.Tensor, offsets: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """The keys of POPO's target-feature noise [n] (int64) for rows known by their tokens alone, with no position
    in a global batch (verl moves rows between ranks): row r is ``tokens[offsets[r]:offsets[r + 1]]``, hashed
    with each token's position, so a row keeps its key wherever it lands (identical rows share one), then
    keyed like `noise_seed` in step `step`'s noise stream."""
    values, offsets = tokens.to(torch.int64), offsets.to(torch.int64)
    lengths = offsets.diff()
    row = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths)
    position = torch.arange(values.numel(), device=values.device) - offsets[:-1][row]
    token = fmix32((values * 0x9E3779B1) ^ fmix32(position * 0x85EBCA77 + 0x27D4EB2F))
    total = torch.zeros(lengths.numel(), dtype=torch.int64, device=values.device).index_add_(0, row, token)
    keys = fmix32((total & _MASK32) ^ fmix32(lengths))
    return row_seeds(torch.tensor(stream_seed(seed, step, NOISE_STREAM), device=values.device), keys)


def prompt_order(seed: int, epoch: int, size: int) -> list[int]:
    """The order of a run's `size` training prompts in epoch `epoch` (`popo.data.stream.PromptStream`): a seeded
    shuffle, a pure function of (seed, epoch)."""
    order = list(range(size))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order


def refill_order_seed(seed: int) -> int:
    """The seed of the order in which dynamic sampling draws fresh prompts (the whole run's)."""
    return stream_seed(seed, 0, REFILL_STREAM)


def refill_seed(seed: int, step: int, position: int, round_: int) -> int:
    """The sampling seed of dynamic sampling's fresh prompt for batch `position` in round `round_` of step `step`."""
    return row_seed(stream_seed(seed, step, REFILL_STREAM), position, round_)


def eval_seed(run_seed: int) -> int:
    """The base sampling seed of the evaluation of a run seeded `run_seed` (the same at every step)."""
    return stream_seed(run_seed, 0, EVAL_STREAM)


def vocab_keys(vocab: int, device=None) -> torch.Tensor:
    """The per-column half of `counter_uniform`'s hash [V] (int64): the same for every row and position,
    so a decoding loop computes it once."""
    v = torch.arange(vocab, dtype=torch.int64, device=device)
    return fmix32(v * 0x9E3779B1 + 0x85EBCA77)


def counter_uniform(seeds: torch.Tensor, position: int | torch.Tensor, vocab: int,
                    keys: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform(0, 1) draws [R, V] (float32, never 0 or 1), a pure function of (seeds[r], position, v).
    `position`: an integer or a 0-dim integer tensor (the same draws: only the low 32 bits are hashed).
    `keys`: `vocab_keys(vocab)`, when the caller has it already."""
    position = position.to(torch.int64) if isinstance(position, torch.Tensor) else torch.tensor(position)
    base = fmix32(seeds.to(torch.int64) ^ fmix32(position * 0x27D4EB2F + 0x165667B1))  # [R]
    keys = vocab_keys(vocab, seeds.device) if keys is None else keys
    h = fmix32(base.unsqueeze(1) ^ keys)  # [R, V]
    # 23 bits keep u = (k + 0.5) / 2^23 exactly representable in float32, so 0 < u < 1 strictly
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def normal_noise(seeds: torch.Tensor, width: int) -> torch.Tensor:
    """Standard normal noise [R, width] (float32), a pure function of (seeds[r], column): Box-Muller on
    two counter-based uniforms."""
    u1 = counter_uniform(seeds, 2**20 + 1, width)
    u2 = counter_uniform(seeds, 2**20 + 2, width)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
