"""The order in which training sees its examples: deterministic, resumable (``state``/``restore``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any


class BatchStream:
    """Endless stream of length-grouped batches, reshuffled each epoch with a seeded generator.

    Grouping by length (sort inside shuffled pools of 50 batches) cuts padding without making batches
    predictable; ``position`` (epoch, batch) is what a resume needs.
    """

    def __init__(self, features: list[Any], length: Callable[[Any], int], batch_size: int, seed: int):
        self.features = features
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[Any]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.features)))
        rng.shuffle(order)
        pool = self.batch_size * 50
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.length(self.features[i]))
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return [[self.features[i] for i in b] for b in batches]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def restore(self, state: dict[str, int]) -> None:
        """Continue exactly where ``state()`` was taken: same epoch plan, same next batch."""
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._batches = self._plan(self.epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        return self

    def __next__(self) -> list[Any]:
        if self.cursor >= len(self._batches):
            self.epoch += 1
            self.cursor = 0
            self._batches = self._plan(self.epoch)
        batch = self._batches[self.cursor]
        self.cursor += 1
        return batch
