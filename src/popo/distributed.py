"""Data-parallel training over processes started by `accelerate launch` (or `torchrun`).

The design keeps a multi-process run numerically the same as one process with the whole batch:

- each step's prompts are split into contiguous shards, one per rank; a prompt's G rollouts stay on its
  rank, so POPO's weights and GRPO's advantages see the whole group;
- every rollout is sampled from its own seed (`popo.rollout.sampling`), so a rank draws exactly the
  rollouts the one-process run would draw for its prompts;
- the loss normalisers (POPO's positive-token count and weight sum, GRPO's token or sequence counts) are
  summed over ranks before any loss is computed, so each rank's loss is its share of the global loss and
  the gradients *add up* (`sum_grads`) to the one-process gradient;
- every rank then takes the same optimizer step on the same gradient, so the policy, the predictor and
  the EMA target stay identical on all ranks without ever being broadcast again;
- a rank with no rows to train still joins every collective, with zero gradients: no hang.

Single process (the default) needs no process group: every method is then the identity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """This process's place in the run; `world == 1` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collective buffers live (CUDA for NCCL)

    @classmethod
    def from_environment(cls, device: str) -> "Dist":
        """Join the process group `accelerate launch` / `torchrun` describe in the environment, if any
        (NCCL on CUDA, gloo on CPU, chosen by accelerate)."""
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return cls(state.process_index, state.num_processes, state.local_process_index, state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """The positions [0, n) this rank owns: a contiguous block, n must divide evenly."""
        if n % self.world:
            raise ValueError(f"{n} prompts per step cannot be split evenly over {self.world} processes")
        size = n // self.world
        return range(self.rank * size, (self.rank + 1) * size)

    # ------------------------------------------------------------------ collectives
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (float64 values survive gloo and NCCL exactly as sums of floats)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """Sum a few numbers over ranks in one collective."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.sum_(t).tolist()

    def max_int(self, value: int) -> int:
        """The largest of the ranks' values."""
        if self.world == 1:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        return self.sum_values([1.0 if flag else 0.0])[0] > 0

    def union_keys(self, keys: Sequence[str]) -> list[str]:
        """The sorted union of every rank's keys (so that all ranks reduce the same list)."""
        if self.world == 1:
            return sorted(keys)
        everyone: list = [None] * self.world
        torch.distributed.all_gather_object(everyone, sorted(keys))
        return sorted({k for ks in everyone for k in ks})

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped per-rank tensors along dim 0, in rank order."""
        if self.world == 1:
            return tensor
        if tensor.dtype == torch.bool:  # not every backend gathers bool tensors
            return self.gather(tensor.to(torch.uint8)).bool()
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def sum_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each gradient by its sum over ranks (a missing gradient counts as zero), in one
        flattened collective per dtype and device."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        buckets: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in params:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in buckets.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            self.sum_(flat)
            offset = 0
            for p in group:
                p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite every rank's tensors with rank 0's (used once, at start-up)."""
        if self.world == 1:
            return
        for t in tensors:
            torch.distributed.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache); the others run it after."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def reduce_update_metrics(metrics: dict[str, float], dist: Dist) -> dict[str, float]:
    """Sum micro-batch metrics over ranks. Each is a share of a global quantity (a loss normalised by
    global counts, a token-weighted mean whose weights are shares of the global token count), so the
    sum is the one-process value. A rank without rows contributes zeros."""
    if dist.world == 1:
        return metrics
    keys = dist.union_keys(list(metrics))
    return dict(zip(keys, dist.sum_values([metrics.get(k, 0.0) for k in keys])))
