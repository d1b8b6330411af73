"""``memory_curve``: RSS after every step of the Trainer (lora, full, adapter, ranking), each in its own
process, the peak within each step, and the RSS kept after each of the trainer's releases of freed memory:
the most a later release kept over the first (see ``bench/helpers.retained_growth``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.spawn import log, run_worker


def section_memory_curve(ctx: Context) -> dict[str, Any]:
    """RSS after every training step (issue 12: it must not grow): the late/early ratio per method."""
    s = ctx.settings
    out: dict[str, Any] = {"steps": s.curve_steps, "early_step": s.curve_early_step, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-curve-") as tmp:
        for method, objective, batch_size in s.curve_runs:
            log(f"memory_curve: {method} {objective} batch {batch_size}, {s.curve_steps} steps, own process")
            spec = {
                "method": method,
                "objective": objective,
                "train": "arc_easy" if objective == "ranking" else "medmcqa",
                "batch_size": batch_size,
                "steps": s.curve_steps,
                "early_step": s.curve_early_step,
            }
            record = run_worker("rss_curve", spec, Path(tmp) / "work")
            out["runs"][f"{method}/{objective}/b{batch_size}"] = record
            if "retained_late_over_early" in record:
                log(
                    f"memory_curve: RSS kept after releases, steps {record['early_step']}-"
                    f"{record['late_step']}: max / first = {record['retained_late_over_early']}; "
                    f"last / first = {record['last_over_early']} (peak {record['peak_rss_mib']:.0f} MiB)"
                )
    return out
