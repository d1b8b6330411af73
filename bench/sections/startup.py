"""``startup``: ``mcqtune eval`` start to first scored batch, cached model vs first GGUF load."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.spawn import log, run_worker


def section_startup(ctx: Context) -> dict[str, Any]:
    """Item 6: `mcqtune eval` start to first scored batch: first GGUF load (empty cache) vs cached."""
    s = ctx.settings
    argv = ["eval", "--data", "medmcqa", "--limit", str(s.startup_limit), "--scoring", "letter"]
    out: dict[str, Any] = {"command": "mcqtune " + " ".join(argv)}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-start-") as tmp:
        for case in ("cold", *["cached"] * s.startup_cached_runs):
            env = dict(os.environ)
            if case == "cold":
                env["MCQTUNE_CACHE"] = str(Path(tmp) / "empty-cache")
            log(f"startup: {case}")
            record = run_worker("startup", {"argv": argv, "t0": time.time()}, Path(tmp) / "work", env=env)
            if "marks" in record:
                m = record["marks"]
                t0 = m["process_start"]
                record["seconds"] = {
                    "imports": round(m["imports_done"] - t0, 2),
                    "model_load": round(m.get("load_end", t0) - m.get("load_start", t0), 2),
                    "to_first_batch": round(m["first_batch"] - t0, 2) if "first_batch" in m else None,
                }
            out.setdefault(case, []).append(record)
    cached = [r["seconds"] for r in out.get("cached", []) if "seconds" in r]
    if cached:
        out["cached_best"] = min(cached, key=lambda x: x["to_first_batch"] or 1e9)
    return out
