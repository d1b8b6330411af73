"""Progress of long work (training, evaluation passes, debias calibration), one helper for all of them.

On a terminal: a tqdm bar. In a log (stderr is not a terminal: a file, a pipe, a compare worker): a plain
line every ``LOG_INTERVAL_SECONDS`` and one when done, instead of carriage-return redraws, which turn a
300-step log into one 60 kB line.

Work that does not know who called it (``score_examples``) reports through :func:`steps`, which shows
progress only inside a :func:`task`: the caller names the work ("validation (arc_easy)"), the callee
counts it. Outside a task nothing is printed, so library use and tests stay quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

LOG_INTERVAL_SECONDS = 30.0
_task: ContextVar[str | None] = ContextVar("mcqtune_progress_task", default=None)


class LogProgress:
    """tqdm's update/set_postfix/close for logs: a whole line now and then, never a carriage return."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LOG_INTERVAL_SECONDS:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        self._print()

    def _print(self) -> None:
        self.last = time.monotonic()
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {self.n}/{self.total} {self.unit}{share}, {self.last - self.start:.0f} s{tail}",
            file=sys.stderr,
            flush=True,
        )


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> Any:
    """A progress bar on a terminal, periodic lines in a log, nothing when not ``enabled``."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr)
    return LogProgress(total, desc, unit, initial)


@contextmanager
def task(label: str | None) -> Iterator[None]:
    """Work done inside reports its progress under ``label`` (None: silently)."""
    token = _task.set(label)
    try:
        yield
    finally:
        _task.reset(token)


def steps(items: Sequence[T], unit: str) -> Iterator[T]:
    """Iterate ``items``, showing progress under the current :func:`task`'s label, if any."""
    label = _task.get()
    progress = bar(len(items), label or "", unit, enabled=label is not None)
    for item in items:
        yield item
        progress.update(1)
    progress.close()
