"""``memory``: peak RSS of ``train()`` for every registered method at the same batch (own process each),
frozen-base weight bytes, and the naive Trainer recipe's peak beside LoRA's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.spawn import log, run_worker


def section_memory(ctx: Context) -> dict[str, Any]:
    """Item 5: every registered method's real train() for a few steps, each in its own process."""
    from mcqtune.methods import METHODS

    s = ctx.settings
    names = sorted(METHODS) if s.memory_methods is None else [m for m in s.memory_methods if m in METHODS]
    runs = [(name, "auto") for name in names] + [("lora", "fp32")]
    out: dict[str, Any] = {"steps": s.memory_steps, "batch_size": s.batch_size, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-mem-") as tmp:
        for method, precision in runs:
            log(f"memory: {method} ({precision}), {s.memory_steps} steps in its own process")
            spec = {
                "method": method,
                "precision": precision,
                "steps": s.memory_steps,
                "batch_size": s.batch_size,
                "output": str(Path(tmp) / f"run-{method}-{precision}"),
            }
            out["runs"][f"{method}/{precision}"] = run_worker("train", spec, Path(tmp) / "work")
        log(f"memory: naive Trainer recipe, {s.naive_memory_steps} steps in its own process")
        config = ctx.lora_config("letter", s.naive_memory_steps)
        spec = {
            "steps": s.naive_memory_steps,
            "batch_size": s.batch_size,
            "options": config.method_options,
            "lr": config.lr,
            "output": str(Path(tmp) / "naive"),
        }
        out["naive"] = run_worker("naive", spec, Path(tmp) / "work")
    return out
