"""The order in which training sees its examples: deterministic, resumable (``state``/``restore``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    """This process's part of one global micro-batch.

    ``weight`` scales the process's mean loss so that the mean over processes (what DDP's gradient
    all-reduce computes) is the mean over the whole global batch: ``len(features) * processes /
    global_size``, 1.0 with one process. A process whose part is empty (a short last batch) runs one
    question of the batch with weight 0: it still joins the all-reduce and adds nothing.
    """

    features: list[Any]
    weight: float
    global_size: int


class BatchStream:
    """Endless stream of length-grouped global batches, reshuffled each epoch with a seeded generator.

    Grouping by length (sort inside shuffled pools of 50 batches) cuts padding without making batches
    predictable; ``position`` (epoch, batch) is what a resume needs. Every process plans the same global
    batches of ``batch_size * processes`` questions (the same seed) and takes its own contiguous slice,
    so N processes of batch B see what one process of batch N x B sees, and a resume needs no more than
    (epoch, batch).
    """

    def __init__(
        self,
        features: list[Any],
        length: Callable[[Any], int],
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        processes: int = 1,
    ):
        self.features = features
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.processes = processes
        self.epoch = 0
        self.cursor = 0
        self._batches = self._plan(0)

    @property
    def global_batch_size(self) -> int:
        """Questions per global micro-batch: the per-process batch times the processes."""
        return self.batch_size * self.processes

    def _plan(self, epoch: int) -> list[list[Any]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.features)))
        rng.shuffle(order)
        size = self.global_batch_size
        pool = size * 50
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.length(self.features[i]))
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
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

    def __iter__(self) -> Iterator[Shard]:
        return self

    def __next__(self) -> Shard:
        if self.cursor >= len(self._batches):
            self.epoch += 1
            self.cursor = 0
            self._batches = self._plan(self.epoch)
        batch = self._batches[self.cursor]
        self.cursor += 1
        # Even split: a full batch gives every process batch_size questions, a short one differs by <= 1.
        start = self.rank * len(batch) // self.processes
        end = (self.rank + 1) * len(batch) // self.processes
        mine = batch[start:end]
        if not mine:
            return Shard([batch[0]], 0.0, len(batch))
        return Shard(mine, len(mine) * self.processes / len(batch), len(batch))
