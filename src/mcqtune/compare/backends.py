"""Where `mcqtune compare` runs its jobs: one after another, K at once on this machine, or on Ray.

A :class:`Job` is one training run and its evaluations (or the zero-shot evaluation). ``run_one(job,
env, started)`` starts the worker process that does it, with ``env`` added to its environment, and
returns its record (``compare_run.json``). A backend only decides where and how many run at once:
every job still runs in its own worker process, so peak memory is per job and a crash is one failed
row. Records reach ``on_done`` as jobs finish; the runner keeps its rows in plan order, so the report
is the same whichever backend ran it.

- ``local`` (default), ``--parallel 1``: one job at a time, the worker inheriting this environment.
- ``local``, ``--parallel K``: K workers at once on this machine; with GPUs one GPU each
  (``CUDA_VISIBLE_DEVICES``), and the CPU cores split between them (``OMP_NUM_THREADS`` = cores // K,
  never more than an ``OMP_NUM_THREADS`` already set), so K x threads <= cores.
- ``ray``: each job a Ray task with its own resource request (``--cpus-per-method``, default 2;
  ``--gpus-per-method``, default 1 on a cluster with GPUs); the worker gets one torch thread per
  requested CPU. ``--address`` joins a running cluster; without it a local instance sized to this
  machine is started and stopped at the end. ``--output`` must be a path every node can write (a
  shared filesystem); each task also sends its record and metrics back, so the report is complete
  even when it is not (the trained artifacts then stay on the node that trained them).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcqtune.artifacts import MANIFEST, METRICS
from mcqtune.atomic import atomic_write_text
from mcqtune.compare.warm import THREAD_VARIABLES, WorkerProcess
from mcqtune.errors import BackendError, ConfigError

BACKENDS = ("local", "ray")
DEFAULT_BACKEND = "local"
DEFAULT_PARALLEL = 1
# A Ray task's CPUs unless --cpus-per-method says otherwise: compare's budget and timings are for 2 threads.
DEFAULT_CPUS_PER_JOB = 2.0
CONNECT_TIMEOUT_SECONDS = 10.0
# How long an interrupted worker gets to save the checkpoint `compare --resume` continues from.
CHECKPOINT_GRACE_SECONDS = 120.0
WAIT_SECONDS = 1.0  # how often the Ray driver looks up from waiting for a task
RUN_RECORD = "compare_run.json"  # what a job's worker writes into its run directory: its status and numbers
RAY_INSTALL_HINT = "pip install 'mcqtune[ray]'"


@dataclass(frozen=True)
class Job:
    """One unit of a compare, whatever executes it: a training run (a method's final run, a seed, a tuning
    trial) and its evaluations, or the zero-shot evaluation, in ``run_dir``."""

    name: str  # runs/<name>
    row: str  # the table row (or the tuned method) it belongs to
    kind: str  # "zero-shot" or "train"
    config: dict[str, Any]  # the resolved TrainConfig as a dict
    fingerprint: str  # what --resume matches
    run_dir: Path
    permutations: str | None = None
    eval_data: tuple[str, ...] = ()
    # A search trial: the Optuna study and trial its checks are reported to (mcqtune.search.study).
    trial_link: dict[str, Any] | None = None


Started = Callable[[WorkerProcess], None]
RunOne = Callable[[Job, Mapping[str, str], Started | None], dict[str, Any]]
OnDone = Callable[[Job, dict[str, Any]], None]


@dataclass(frozen=True)
class Execution:
    """How the jobs run: compare's --backend, --parallel, --address, --cpus-per-method, --gpus-per-method."""

    backend: str = DEFAULT_BACKEND
    parallel: int = DEFAULT_PARALLEL
    address: str | None = None
    cpus_per_job: float | None = None  # None: DEFAULT_CPUS_PER_JOB (capped by the largest node)
    gpus_per_job: float | None = None  # None: 1 when the cluster has GPUs, else 0

    def check(self) -> None:
        """Flags that do not fit the backend, said before anything runs."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend}: expected one of {', '.join(BACKENDS)}")
        if self.parallel < 1:
            raise ConfigError(f"--parallel {self.parallel}: expected 1 or more")
        ray_only = {
            "--address": self.address,
            "--cpus-per-method": self.cpus_per_job,
            "--gpus-per-method": self.gpus_per_job,
        }
        given = [flag for flag, value in ray_only.items() if value is not None]
        if self.backend != "ray" and given:
            raise ConfigError(f"{', '.join(given)}: only with --backend ray")
        if self.backend == "ray" and self.parallel != DEFAULT_PARALLEL:
            raise ConfigError(
                "--parallel: only with --backend local; Ray runs as many methods at once as the "
                "cluster's resources allow (--cpus-per-method, --gpus-per-method)"
            )
        for flag, value in (
            ("--cpus-per-method", self.cpus_per_job),
            ("--gpus-per-method", self.gpus_per_job),
        ):
            if value is not None and value < 0:
                raise ConfigError(f"{flag} {value:g}: expected 0 or more")


class Backend:
    """Runs independent jobs and returns their records in job order; ``on_done`` hears each as it ends."""

    def run(self, jobs: Sequence[Job], run_one: RunOne, on_done: OnDone) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (a Ray instance it started)."""


def open_backend(execution: Execution) -> Backend:
    """The backend ``execution`` asks for, connected: a missing Ray or an unreachable cluster fails here,
    before the compare writes anything."""
    execution.check()
    if execution.backend == "ray":
        return RayBackend(execution)
    if execution.parallel == 1:
        return Sequential()
    return LocalParallel(execution.parallel)


class Sequential(Backend):
    """One job after another, each worker inheriting this process's environment (the default)."""

    def run(self, jobs: Sequence[Job], run_one: RunOne, on_done: OnDone) -> list[dict[str, Any]]:
        records = []
        for job in jobs:
            record = run_one(job, {}, None)
            on_done(job, record)
            records.append(record)
        return records


# ------------------------------------------------------------------------------------------- local
def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. under taskset or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [d.strip() for d in given.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def thread_env(threads: int) -> dict[str, str]:
    """A worker's torch/BLAS thread count (torch reads OMP_NUM_THREADS when it starts)."""
    return dict.fromkeys(THREAD_VARIABLES, str(threads))


def local_slots(parallel: int) -> list[dict[str, str]]:
    """One environment per concurrent worker: a GPU each when there are GPUs, and cores // K threads.

    K is capped at the GPU count (two trainings on one GPU compete for its memory), or on CPU at the
    core count (a worker needs at least one core); an ``OMP_NUM_THREADS`` already set caps the threads."""
    gpus = visible_gpus()
    cores = available_cores()
    width = min(parallel, len(gpus) if gpus else cores)
    threads = max(1, cores // width)
    with_limit = os.environ.get("OMP_NUM_THREADS", "")
    if with_limit.isdigit() and int(with_limit) > 0:
        threads = min(threads, int(with_limit))
    if width < parallel:
        what = f"{len(gpus)} GPU(s)" if gpus else f"{cores} core(s)"
        print(f"--parallel {parallel}: {width} at once ({what})", flush=True)
    return [thread_env(threads) | ({"CUDA_VISIBLE_DEVICES": gpus[i]} if gpus else {}) for i in range(width)]


class LocalParallel(Backend):
    """K workers at once on this machine, each in its own slot (GPU, thread count).

    This thread hands a freed slot its next job only after ``on_done`` has taken the last result, so an
    interrupt (or a failing report write) starts nothing new."""

    def __init__(self, parallel: int):
        self.slots = local_slots(parallel)
        self._live: set[WorkerProcess] = set()
        self._stopping = False
        self._lock = threading.Lock()

    def _started(self, proc: WorkerProcess) -> None:
        with self._lock:
            self._live.add(proc)
            if self._stopping:  # started while the interrupt was being handled
                proc.send_signal(signal.SIGINT)

    def run(self, jobs: Sequence[Job], run_one: RunOne, on_done: OnDone) -> list[dict[str, Any]]:
        waiting = iter(jobs)
        running: dict[Future, tuple[Job, dict[str, str]]] = {}
        records: dict[str, dict[str, Any]] = {}
        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="compare-job")

        def start_next(slot: dict[str, str]) -> None:
            job = next(waiting, None)
            if job is not None:
                running[pool.submit(run_one, job, slot, self._started)] = (job, slot)

        try:
            for slot in self.slots:
                start_next(slot)
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, slot = running.pop(future)
                    records[job.name] = future.result()
                    on_done(job, records[job.name])
                    start_next(slot)
        except BaseException:
            self._interrupt()
            raise
        finally:
            pool.shutdown(wait=True)  # on an interrupt: the running workers save a checkpoint and exit
        return [records[job.name] for job in jobs]

    def _interrupt(self) -> None:
        """Ctrl-C reaches the workers with this process; SIGTERM does not: pass it on as SIGINT, which a
        worker answers by saving a checkpoint."""
        with self._lock:
            self._stopping = True
            running = [p for p in self._live if p.poll() is None]
            for proc in running:
                proc.send_signal(signal.SIGINT)
        if running:
            print(
                f"interrupted: waiting for {len(running)} running method(s) to save a checkpoint", flush=True
            )


# ------------------------------------------------------------------------------------------- ray
def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise BackendError(f"--backend ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from exc
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds on an address where no Ray head listens (``ray.init`` would retry for minutes)."""
    if address == "auto":  # the cluster this machine belongs to: ray.init finds it or fails at once
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(
            f"--address {address}: expected HOST:PORT (the head node's GCS port, 6379 by default), "
            "ray://HOST:PORT (Ray client, 10001 by default) or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise BackendError(
            f"--address {address}: no Ray head node answers there ({exc}); start one with "
            "`ray start --head`, or leave --address out to run on a local Ray instance"
        ) from exc


def result_files(run_dir: Path) -> dict[str, str]:
    """What the report reads from a run directory (record, metrics, manifest), as text."""
    paths = [run_dir / name for name in (RUN_RECORD, METRICS, MANIFEST)]
    return {path.name: path.read_text(encoding="utf-8") for path in paths if path.is_file()}


def receive_files(run_dir: Path, files: Mapping[str, str]) -> None:
    """Write what a task sent back where the driver does not already see it (no shared filesystem)."""
    for name, text in files.items():
        path = run_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)


def _ray_job(run_one: RunOne, job: Job, threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    """A Ray task: run the job's worker with one thread per CPU the task holds (Ray sets its GPUs)."""
    record = run_one(job, thread_env(threads), None)
    return record, result_files(job.run_dir)


class RayBackend(Backend):
    """Each job a Ray task with its own CPU/GPU request, on a cluster or a local instance."""

    def __init__(self, execution: Execution):
        self.ray = _import_ray()
        if execution.address:
            check_reachable(execution.address)
        self.owns_connection = not self.ray.is_initialized()
        if self.owns_connection:
            self._connect(execution.address)
        self.cpus, self.gpus = self._request(execution)

    def _connect(self, address: str | None) -> None:
        ray = self.ray
        if address:
            try:
                ray.init(address=address)  # the cluster's own settings (Ray client mode allows no others)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BackendError(f"--address {address}: could not join the Ray cluster: {exc}") from exc
            return
        # A local instance bounded by this machine, stopped by close().
        ray.init(
            num_cpus=available_cores(),
            num_gpus=len(visible_gpus()),
            include_dashboard=False,
            configure_logging=False,
        )

    def _request(self, execution: Execution) -> tuple[float, float]:
        """Each task's CPUs and GPUs; a request no node can hold fails now (Ray would wait forever)."""
        nodes = [node["Resources"] for node in self.ray.nodes() if node.get("Alive")]
        most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        cpus = execution.cpus_per_job
        if cpus is None:
            cpus = min(DEFAULT_CPUS_PER_JOB, most_cpus) or DEFAULT_CPUS_PER_JOB
        gpus = execution.gpus_per_job
        if gpus is None:
            gpus = 1.0 if most_gpus else 0.0
        if cpus > most_cpus or gpus > most_gpus:
            self.close()
            raise BackendError(
                f"--cpus-per-method {cpus:g} --gpus-per-method {gpus:g}: no node of the Ray cluster has "
                f"that many (the largest: {most_cpus:g} CPUs, {most_gpus:g} GPUs)"
            )
        return cpus, gpus

    def run(self, jobs: Sequence[Job], run_one: RunOne, on_done: OnDone) -> list[dict[str, Any]]:
        ray = self.ray
        task = ray.remote(_ray_job).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        threads = max(1, int(self.cpus))
        refs = {task.remote(run_one, job, threads): job for job in jobs}
        records: dict[str, dict[str, Any]] = {}
        pending = list(refs)
        try:
            while pending:
                # Short waits: a signal (Ctrl-C, SIGTERM) is handled between them, not after a method.
                ready, pending = ray.wait(pending, num_returns=1, timeout=WAIT_SECONDS)
                if not ready:
                    continue
                job = refs[ready[0]]
                try:
                    record, files = ray.get(ready[0])
                    receive_files(job.run_dir, files)
                except ray.exceptions.RayError as exc:  # the task itself died (node lost, worker killed)
                    record = {
                        "kind": job.kind,
                        "method": job.name,
                        "fingerprint": job.fingerprint,
                        "status": "failed",
                        "error": f"Ray task failed: {str(exc).strip().splitlines()[0][:300]}",
                    }
                records[job.name] = record
                on_done(job, record)
        except BaseException:
            # Cancelling raises KeyboardInterrupt in each task: its worker saves a checkpoint and exits.
            for ref in pending:
                ray.cancel(ref)
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=CHECKPOINT_GRACE_SECONDS)
            raise
        return [records[job.name] for job in jobs]

    def close(self) -> None:
        if self.owns_connection and self.ray.is_initialized():
            self.ray.shutdown()
