"""What ``bench/run.py`` and ``bench/levers.py`` share: the progress log and running a ``bench/worker.py``
task in a fresh process (peak RSS and start-up need a process of their own)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_worker(
    task: str, spec: dict[str, Any], tmp: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run bench/worker.py TASK in a fresh process; its stdout/stderr go to a log beside the JSON."""
    tmp.mkdir(parents=True, exist_ok=True)
    name = f"{task}-{spec.get('method', '')}-{spec.get('precision', '')}-{len(list(tmp.iterdir()))}"
    spec_path, out_path, log_path = tmp / f"{name}.spec.json", tmp / f"{name}.json", tmp / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(ROOT / "bench" / "worker.py"), task, str(spec_path), str(out_path)]
    with open(log_path, "w") as logfile:
        start = time.perf_counter()
        code = subprocess.call(command, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
    if code != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {"error": f"exit {code}", "log_tail": tail, "process_seconds": round(wall, 2)}
    record = json.loads(out_path.read_text())
    record["process_seconds"] = round(wall, 2)
    return record
