"""Starting a compare or search worker: forked from a warm process, or a fresh interpreter.

A fresh worker spends ~7 s (more on a slow host) importing torch, transformers and peft before it
trains for a few seconds or minutes; a 20-trial search paid that 20 times. Workers are therefore forked
from multiprocessing's fork server, which imports :mod:`mcqtune.compare.worker` (and so those libraries)
once per parent process. A forked worker is the same process a fresh one would be where it can be:

- its environment is the job's and its working directory the parent's at launch;
- its torch thread count is set from the job's ``OMP_NUM_THREADS`` (the fork server read its own);
- it writes to the run's log and exits with the worker's code, or dies by the signal that killed it.

Where a fork could not be that process, the worker starts fresh (``python -m mcqtune.compare.worker``):
with CUDA (a CUDA runtime initialised before the fork is unusable in the child; GPU runs are long enough
that the imports do not matter), when a test swaps the worker script, or when ``MCQTUNE_FRESH_WORKERS=1``
asks for it. When a variable libraries read at import differs from the one the fork server started with
(say ``HF_HOME``), the server is restarted with it, or, while a forked worker still runs, that job starts
fresh.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

WORKER_MODULE = "mcqtune.compare.worker"
DEFAULT_WORKER_ARGS = ("-m", WORKER_MODULE)
FRESH_ENV = "MCQTUNE_FRESH_WORKERS"  # "1": every worker a fresh interpreter
# A worker's torch/BLAS thread count (torch reads them when it starts; a fork gets set_num_threads).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Variables that change while a process runs and that no library reads at import: never a reason to start
# a worker fresh. The thread counts and stream settings are applied after the fork.
_IGNORED = frozenset({"PYTEST_CURRENT_TEST", "COLUMNS", "LINES", "_", "OLDPWD", "PWD", FRESH_ENV})
_APPLIED_AFTER_FORK = frozenset({*THREAD_VARIABLES, "PYTHONUNBUFFERED", "TOKENIZERS_PARALLELISM"})
# The trackers' variables are read when a run opens its tracker, after the fork has the job's environment
# (the server never imports mlflow or wandb): a job's own tracking URI needs no new server.
_READ_WHEN_USED = ("MLFLOW_", "WANDB_")


class WorkerProcess(Protocol):
    """What the launcher and the backends ask of a running worker (a :class:`subprocess.Popen` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class _ForkedWorker:
    """A forked worker seen through Popen's interface: poll, wait (raising TimeoutExpired), signals."""

    def __init__(self, process) -> None:
        self._process = process
        self.pid: int = process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(WORKER_MODULE, timeout or 0.0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_lock = threading.Lock()
_server_env: dict[str, str] | None = None  # the environment the fork server started with
_cuda: bool | None = None
_forked: set[_ForkedWorker] = set()  # workers forked from the current server, until seen finished


def _signature(env: Mapping[str, str]) -> dict[str, str]:
    """What must match between the fork server's environment and a job's for a fork to stand in for a fresh
    start: every variable except the volatile ones, those applied after the fork and the trackers'."""
    return {
        key: value
        for key, value in env.items()
        if key not in _IGNORED | _APPLIED_AFTER_FORK and not key.startswith(_READ_WHEN_USED)
    }


def _same_process(job: Mapping[str, str], server: Mapping[str, str]) -> bool:
    """Whether a fork of the server, given the job's environment, is the process a fresh start would be. A
    thread count the server had and the job has not would stick (torch read it at import): not the same."""
    lost_limit = any(key in server and key not in job for key in THREAD_VARIABLES)
    return not lost_limit and _signature(job) == _signature(server)


def _has_cuda() -> bool:
    global _cuda
    if _cuda is None:
        import torch

        _cuda = torch.cuda.device_count() > 0
    return _cuda


def _fork_server_for(env: Mapping[str, str]):
    """The fork-server context when a fork can stand in for a fresh worker with ``env``, else None (called
    under ``_lock``).

    The server has this process's environment when it starts. A job whose environment differs from it
    (a test's or a caller's changed variable) restarts it once no forked worker is running, else that
    job starts fresh."""
    global _server_env
    if env.get(FRESH_ENV) == "1" or os.environ.get(FRESH_ENV) == "1" or _has_cuda():
        return None
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    _forked.difference_update([worker for worker in _forked if worker.poll() is not None])
    if _server_env is not None and not _same_process(env, _server_env):
        if _forked:
            return None
        forkserver._forkserver._stop()  # the stdlib's own way to stop it (its tests use it)
        _server_env = None
    if _server_env is None:
        if not _same_process(env, os.environ):
            return None
        context.set_forkserver_preload([WORKER_MODULE])
        _server_env = dict(os.environ)
        forkserver.ensure_running()
    return context


def start_worker(
    worker_args: Sequence[str], spec_path: Path, env: Mapping[str, str], log_path: Path
) -> WorkerProcess:
    """The worker for one job, writing to ``log_path``: forked warm where it can be, else fresh."""
    if tuple(worker_args) == DEFAULT_WORKER_ARGS:
        with _lock:  # no restart of the server between the check and the fork
            context = _fork_server_for(env)
            if context is not None:
                process = context.Process(
                    target=_forked_main,
                    args=(str(spec_path), dict(env), os.getcwd(), str(log_path)),
                    name=WORKER_MODULE,
                )
                process.start()
                worker = _ForkedWorker(process)
                _forked.add(worker)
                return worker
    with open(log_path, "a", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, *worker_args, str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )


def _forked_main(spec_path: str, env: dict[str, str], cwd: str, log_path: str) -> None:
    """A forked worker's entry: become the process a fresh start would have been, then run the worker."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(log_fd, fd)
        stream.reconfigure(line_buffering=True)
    os.close(log_fd)
    threads = env.get(THREAD_VARIABLES[0], "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    # Named like `python -m` names it, not imported here: the parent process never runs a worker.
    worker = importlib.import_module(WORKER_MODULE)
    try:
        code = worker.worker_main([spec_path], start="forked")
    finally:
        atexit._run_exitfuncs()  # a fresh interpreter runs these at exit (trackers flush); a fork would not
    sys.exit(code)
