"""``lm_eval``: ``bench/lm_eval_parity.py``: questions/s of mcqtune's letter and cloze scoring against
lm-evaluation-harness's loglikelihood scoring of the same questions, and per-question agreement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.context import ROOT, Context
from bench.spawn import log


def section_lm_eval(ctx: Context) -> dict[str, Any]:
    """Item 4 of issue 12: evaluation throughput against lm-evaluation-harness, same questions, same
    batch size, each tool timed with its model loaded; predictions compared per question."""
    out = ctx.out_dir / "lm_eval_parity"
    rows = ctx.settings.lm_eval_rows
    command = [sys.executable, str(ROOT / "bench" / "lm_eval_parity.py"), "--n", str(rows), "--out", str(out)]
    log(f"lm_eval: {rows} MedMCQA rows, letter and cloze, mcqtune vs lm-eval")
    done = subprocess.run(command, capture_output=True, text=True)
    if not (out / "parity.json").exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        raise RuntimeError(f"lm_eval_parity failed (exit {done.returncode}): " + " | ".join(tail))
    return json.loads((out / "parity.json").read_text())
