"""Dynamic batching: questions that arrive within a short window are scored in one forward pass.

Requests put (question, artifact) items on an asyncio queue and await a future. One collector task
takes the first waiting item, keeps taking items until ``max_batch`` are held or the window has passed
(``window_ms``, or :data:`WINDOW_SHARE` of the last batch's scoring time if that is longer), groups
them by artifact and hands the batch to a single worker thread, which loads artifacts (registry) and
scores (engine) so the model is never used by two threads at once. With ``max_batch=1`` every
question is its own forward pass (batching off: the benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from mcqtune.data import MCQExample
from mcqtune.errors import RequestError
from mcqtune.serving import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_MS
from mcqtune.serving.registry import ArtifactRegistry

# A batch waits for more questions for ``window_ms`` or this share of the last batch's scoring time,
# whichever is longer. Where a pass takes a second (a busy CPU), the clients answered by one batch need
# more than 5 ms to send their next question: bench/serve_bench.py collected 5.8 of its 8 clients' questions
# per batch with 5 ms. Waiting 5% of a pass costs at most 5% of latency.
WINDOW_SHARE = 0.05
T = TypeVar("T")


class Clock:
    """Time as the batcher reads and waits on it: a monotonic clock and a bounded wait for the next
    question. Tests pass one they control, so a window is checked without sleeping against it."""

    def now(self) -> float:
        return time.perf_counter()

    async def wait(self, next_item: Awaitable[_Item], timeout: float) -> _Item:
        """The next queued item, or TimeoutError after ``timeout`` seconds."""
        return await asyncio.wait_for(next_item, timeout)


@dataclass
class Answer:
    scores: np.ndarray  # one score per option
    scoring: str
    batch_size: int  # questions in the forward pass this answer came from
    temperature: float | None = None  # the artifact's calibration temperature (None: uncalibrated)


@dataclass
class _Item:
    example: MCQExample
    adapter: str | None
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    def __init__(
        self,
        registry: ArtifactRegistry,
        *,
        window_ms: float = DEFAULT_WINDOW_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_batch: Callable[[int], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock or Clock()
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcqtune-score")
        self._last_pass_seconds = 0.0  # how long the last batch took to score

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._worker.shutdown(wait=True)

    async def submit(self, examples: list[MCQExample], adapters: list[str | None]) -> list[Answer]:
        """Queue questions (each with its artifact) and wait for their answers."""
        assert self._queue is not None, "batcher not started"
        loop = asyncio.get_running_loop()
        items = [_Item(e, a, loop.create_future()) for e, a in zip(examples, adapters, strict=True)]
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    def current_window(self) -> float:
        """Seconds a batch waits for more questions after its first: ``window_ms`` or
        :data:`WINDOW_SHARE` of the last pass, whichever is longer."""
        return max(self.window, WINDOW_SHARE * self._last_pass_seconds)

    async def run(self, adapter: str | None, job: Callable[[], T]) -> T:
        """Run ``job`` on the model thread with artifact ``adapter`` loaded (the OpenAI endpoints'
        work: between batches, never beside one)."""

        def work() -> T:
            self.registry.ensure(adapter, keep=[adapter])
            return job()

        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = self.clock.now() + self.current_window()
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    break
                try:
                    batch.append(await self.clock.wait(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self.on_batch(len(batch))
            start = self.clock.now()
            results = await loop.run_in_executor(self._worker, self._score, batch)
            self._last_pass_seconds = self.clock.now() - start
            for item, result in zip(batch, results, strict=True):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _score(self, batch: list[_Item]) -> list[Answer | Exception]:
        """Worker thread: load what the batch names, then score it (one pass per artifact, or one for
        several LoRA artifacts); an artifact that fails to load fails only its own questions."""
        results: list[Answer | Exception | None] = [None] * len(batch)
        groups: dict[str | None, list[int]] = {}
        for index, item in enumerate(batch):
            groups.setdefault(item.adapter, []).append(index)
        for chunk in self.registry.loadable_together(list(groups)):
            ready = {}
            for adapter in chunk:
                try:
                    self.registry.ensure(adapter, keep=chunk)
                    ready[adapter] = [batch[i].example for i in groups[adapter]]
                except Exception as exc:
                    for i in groups[adapter]:
                        results[i] = exc
            try:
                scored = self.registry.engine.score_groups(ready)
            except Exception as exc:  # a bug or an exhausted machine: these questions say so
                for adapter in ready:
                    for i in groups[adapter]:
                        results[i] = exc
                continue
            for adapter, scores in scored.items():
                for i, row in zip(groups[adapter], scores.rows, strict=True):
                    results[i] = (
                        Answer(row, scores.scoring, len(batch), scores.temperature)
                        if row is not None
                        else RequestError(
                            "the question and its options are longer than the model's maximum length"
                        )
                    )
        return results  # type: ignore[return-value]  # every item was given an answer or an error
