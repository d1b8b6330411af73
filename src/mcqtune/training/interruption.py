"""Stopping a training run cleanly: SIGINT/SIGTERM finish the current step, a checkpoint is saved, and
:class:`TrainingInterrupted` tells the command how to resume (docs/RELIABILITY.md)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the run can be resumed."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Path):
        self.signal_name = signal_name
        self.step = step
        self.total_steps = total_steps
        self.checkpoint = checkpoint
        super().__init__(
            f"training stopped by {signal_name} after step {step} of {total_steps}; "
            f"checkpoint saved to {checkpoint}"
        )


class StopRequest:
    """SIGINT/SIGTERM while training: finish the current step, save a checkpoint, then stop.

    A second signal restores the default behaviour at once (the previous checkpoint stays intact).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(
            f"\n{self.signal}: finishing this step and saving a checkpoint "
            "(press Ctrl-C again to stop at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()
