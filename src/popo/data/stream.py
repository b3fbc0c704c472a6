"""The order in which a run visits its training prompts."""

from __future__ import annotations

from popo.errors import SetupError
from popo.seeds import prompt_order


class PromptStream:
    """Prompts in a seeded order, reshuffled each epoch; batch `step` is a pure function of the step,
    so a resumed run sees exactly the prompts an uninterrupted one would."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size == 0:
            raise SetupError("no training prompts")
        self.size, self.batch_size, self.seed = size, batch_size, seed

    def _order(self, epoch: int) -> list[int]:
        return prompt_order(self.seed, epoch, self.size)

    def batch(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        orders: dict[int, list[int]] = {}
        out = []
        for pos in positions:
            epoch = pos // self.size
            if epoch not in orders:  # shuffle each epoch once, not once per prompt
                orders[epoch] = self._order(epoch)
            out.append(orders[epoch][pos % self.size])
        return out
