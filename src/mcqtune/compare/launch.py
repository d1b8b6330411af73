"""Launching one compare run: its worker process (:mod:`mcqtune.compare.worker`), its log, its memory.

The worker writes ``compare_run.json`` into its run directory: status, wall time and its own peak memory
(``ru_maxrss`` of that process on CPU, ``torch.cuda.max_memory_allocated`` on GPU). A worker that crashes
or is killed (out of memory: SIGKILL) leaves no record: the parent writes a failed one, with the peak RSS
it sampled meanwhile, so the compare goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mcqtune.artifacts import METRICS
from mcqtune.atomic import atomic_write_json
from mcqtune.compare.backends import CHECKPOINT_GRACE_SECONDS, RUN_RECORD, Job
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.plan import CompareSettings
from mcqtune.compare.warm import WorkerProcess, start_worker

RUN_LOG = "compare.log"
RUN_SPEC = "compare_spec.json"
ECHO_POLL_SECONDS = 0.2  # how often the worker's log is read for --echo


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class _MemoryPoller(threading.Thread):
    """Peak RSS of a child process tree, sampled twice a second (fallback when the child is killed)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            self.stop.wait(0.5)


def _echo_log(path: Path, offset: int, method: str, finished: threading.Event) -> None:
    """Print the worker's log lines as they arrive (prefixed with the method), until it has exited."""
    with open(path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        pending = ""
        while True:
            done = finished.is_set()  # read once more after the worker exits: its last lines
            pending += log.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                print(f"  [{method}] {line.rstrip()}", flush=True)
            if done:
                if pending.strip():
                    print(f"  [{method}] {pending.rstrip()}", flush=True)
                return
            finished.wait(ECHO_POLL_SECONDS)


def run_job(
    settings: CompareSettings,
    job: Job,
    env: Mapping[str, str],
    started: Callable[[WorkerProcess], None] | None = None,
) -> dict[str, Any]:
    """What a backend runs: one unit's worker, with ``env`` added (threads, GPU); returns its record."""
    steps = job.config["max_steps"]
    what = "zero-shot evaluation" if job.kind == ZERO_SHOT else f"training {steps} steps"
    print(f"{job.name}: {what}...", flush=True)
    return _run_worker(settings, job, env=env, started=started)


def _run_worker(
    settings: CompareSettings,
    job: Job,
    *,
    env: Mapping[str, str] | None = None,
    started: Callable[[WorkerProcess], None] | None = None,
) -> dict[str, Any]:
    method, kind, fp = job.name, job.kind, job.fingerprint
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_RECORD).unlink(missing_ok=True)  # never read a stale record after a crash
    spec = {
        "kind": kind,
        "method": method,
        "run_dir": str(run_dir),
        "config": job.config,
        "fingerprint": fp,
        "resume": settings.resume,
        "permutations": job.permutations,
        "eval_data": list(job.eval_data),
        "trial_link": job.trial_link,
    }
    spec_path = run_dir / RUN_SPEC
    atomic_write_json(spec_path, spec)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    log_path = run_dir / RUN_LOG
    with open(log_path, "a", encoding="utf-8") as log_file:
        command = shlex.join([sys.executable, *settings.worker_args, str(spec_path)])
        log_file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
        echo_from = log_file.tell()
    start = time.perf_counter()
    proc = start_worker(settings.worker_args, spec_path, env, log_path)
    if started is not None:
        started(proc)
    poller = _MemoryPoller(proc.pid)
    poller.start()
    finished = threading.Event()
    echo = threading.Thread(target=_echo_log, args=(log_path, echo_from, method, finished), daemon=True)
    if settings.echo:
        echo.start()
    timed_out = False
    try:
        proc.wait(timeout=settings.method_timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    except BaseException:
        # Ctrl-C reaches the worker too (same process group): give it time to save a checkpoint
        # that `compare --resume` continues from, then make sure no orphan keeps training.
        print(
            f"  [{method}] interrupted: waiting up to {CHECKPOINT_GRACE_SECONDS:g} s for it to save "
            "a checkpoint",
            flush=True,
        )
        try:
            if proc.poll() is None:  # the signal may have reached only this process
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=CHECKPOINT_GRACE_SECONDS)
        except BaseException:
            proc.kill()
            proc.wait()
        raise
    finally:
        poller.stop.set()
        finished.set()
        if echo.is_alive():
            echo.join(timeout=10)
    returncode = proc.poll()
    assert returncode is not None
    wall = round(time.perf_counter() - start, 2)
    record_path = run_dir / RUN_RECORD
    record: dict[str, Any] = {}
    if record_path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(record_path.read_text(encoding="utf-8"))
    if not record:
        if timed_out:
            error = f"timed out after {settings.method_timeout:g} s (--method-timeout)"
        elif returncode < 0:
            name = _signal_name(returncode)
            likely = " (likely out of memory: killed by the kernel)" if name == "SIGKILL" else ""
            error = f"killed by {name}{likely}"
        else:
            error = f"worker exited with code {returncode} before writing a record"
        record = {
            "kind": kind,
            "method": method,
            "fingerprint": fp,
            "status": "failed",
            "error": error + f"; see {run_dir / RUN_LOG}",
            "wall_seconds": wall,
            "peak_rss_bytes": poller.peak or None,
        }
        atomic_write_json(record_path, record)
    record["process_wall_seconds"] = wall
    return record


def finished_record(run_dir: Path, fp: str) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") != "ok" or record.get("fingerprint") != fp:
        return None
    if not (run_dir / METRICS).is_file():
        return None
    return record
