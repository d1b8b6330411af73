"""compare's execution backends (mcqtune.compare.backends): `--parallel 2` and a local Ray instance give
the sequential runner's results, row for row and question for question; bad execution flags and an
unreachable Ray cluster are clear errors before anything is written."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import deadline
from mcqtune.cli.main import main
from mcqtune.compare import backends
from mcqtune.compare.backends import RUN_RECORD, Execution, Job, LocalParallel, local_slots, open_backend
from mcqtune.compare.evidence import ZERO_SHOT
from mcqtune.compare.plan import CompareSettings
from mcqtune.compare.runner import run_compare
from mcqtune.config import ConfigError
from mcqtune.data import bundled_path, load_examples
from mcqtune.errors import BackendError
from mcqtune.inference import Predictor

METHODS_UNDER_TEST = ["lora", "full"]
FINAL_N = 12
# Every number a row reports about what was trained and how it scored (not timings or memory).
SAME_KEYS = (
    "status",
    "objective",
    "scoring",
    "n_eval",
    "accuracy",
    "ci95_low",
    "ci95_high",
    "majority_baseline",
    "predicted_letter_distribution",
    "trainable_params",
    "total_params",
    "artifact_bytes",
    "steps",
    "examples_seen",
    "best_step",
    "learning_curve",
)
# A hang guard (a Ray worker that never answers), not a speed bound: far above what the test takes
# even on a loaded machine.
RAY_HANG_SECONDS = 1200


@pytest.fixture(scope="module")
def one_thread():
    """Every worker on one torch thread, whatever the backend, so float results cannot differ by the
    thread count (a reduction split over more threads sums in another order)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in backends.THREAD_VARIABLES:
            mp.setenv(name, "1")
        yield


def _settings(
    output: Path, model_dir: Path, execution: Execution, methods: list[str] = METHODS_UNDER_TEST
) -> CompareSettings:
    return CompareSettings(
        output=output,
        methods=list(methods),
        quick=True,  # the --quick budget (16 steps, 3 curve points) on the tiny model, fewer questions
        overrides={"model": str(model_dir), "eval_limit": 8, "final_eval_limit": FINAL_N},
        echo=False,
        execution=execution,
    )


def _compare(
    tmp: Path, model_dir: Path, execution: Execution, methods: list[str] = METHODS_UNDER_TEST
) -> dict:
    settings = _settings(tmp / "cmp", model_dir, execution, methods)
    run_compare(settings)
    return json.loads((settings.output / "results.json").read_text(encoding="utf-8"))


def _rows(results: dict) -> dict[str, dict]:
    return {row["method"]: row for row in results["rows"]}


def _records(results: dict) -> dict[str, dict]:
    return {
        row["method"]: json.loads((Path(row["run_dir"]) / RUN_RECORD).read_text(encoding="utf-8"))
        for row in results["rows"]
    }


def _predictions(results: dict) -> dict[str, list[int]]:
    """Each trained method's answer to every final-evaluation question, from its saved artifact."""
    rows = load_examples(bundled_path("arc_easy", "validation")).examples[:FINAL_N]
    runs = {m: Path(r["run_dir"]) for m, r in _rows(results).items() if m != ZERO_SHOT}
    predictor = Predictor.open(None, runs)
    return {name: predictor.score(rows, adapter=name).scored.predictions.tolist() for name in runs}


def _assert_same_results(got: dict, expected: dict, methods: list[str] = METHODS_UNDER_TEST) -> None:
    """``got``'s rows (the zero-shot one and ``methods``') are ``expected``'s, answers included."""
    assert [r["method"] for r in got["rows"]] == [ZERO_SHOT, *methods]
    assert got["complete"] is True
    expected_rows = {m: r for m, r in _rows(expected).items() if m in (ZERO_SHOT, *methods)}
    for method, row in expected_rows.items():
        assert row["status"] == "ok", row["error"]
        assert {k: _rows(got)[method][k] for k in SAME_KEYS} == {k: row[k] for k in SAME_KEYS}, method
    wanted = _predictions(expected)
    assert _predictions(got) == {m: wanted[m] for m in methods}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, tiny_model_dir, one_thread):
    return _compare(tmp_path_factory.mktemp("sequential"), tiny_model_dir, Execution())


# ------------------------------------------------------------------------------------------- end to end
def test_parallel_two_equals_sequential(tmp_path, tiny_model_dir, sequential):
    results = _compare(tmp_path, tiny_model_dir, Execution(parallel=2))
    _assert_same_results(results, sequential)
    # Each worker got its slot's thread count (cores // 2, capped by the OMP_NUM_THREADS set here).
    assert {r["threads"] for r in _records(results).values()} == {1}


def test_ray_local_instance_equals_sequential(tmp_path, tiny_model_dir, sequential):
    import ray

    with deadline(RAY_HANG_SECONDS):
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
        try:
            # LoRA's row only (CI time: each Ray task is a fresh interpreter); both methods: parallel=2
            ray_execution = Execution(backend="ray", cpus_per_job=1)
            results = _compare(tmp_path, tiny_model_dir, ray_execution, ["lora"])
        finally:
            ray.shutdown()
    _assert_same_results(results, sequential, ["lora"])
    assert {r["threads"] for r in _records(results).values()} == {1}  # one thread per requested CPU


# ------------------------------------------------------------------------------------------- bad input
def test_unreachable_ray_address_is_a_clear_error_and_writes_nothing(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    """Refused by one bounded connect, never by ``ray.init`` (minutes of retries). The seconds it takes
    are a limit, measured in bench/limits.py."""
    ray = pytest.importorskip("ray")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connects: list[tuple] = []
    real_connect = socket.create_connection

    def connect(address, timeout=None, *args, **kwargs):
        connects.append((address, timeout))
        return real_connect(address, timeout, *args, **kwargs)

    def no_ray_init(*args, **kwargs):
        raise AssertionError("ray.init must not be reached for an unreachable address")

    monkeypatch.setattr(backends.socket, "create_connection", connect)
    monkeypatch.setattr(ray, "init", no_ray_init)
    output = tmp_path / "cmp"
    argv = ["compare", "--backend", "ray", "--address", f"127.0.0.1:{port}", "--quick"]
    argv += ["--output", str(output), "--model", str(tiny_model_dir), "--methods", "lora"]
    assert main(argv) == 2
    assert connects == [(("127.0.0.1", port), backends.CONNECT_TIMEOUT_SECONDS)]
    err = capsys.readouterr().err
    assert f"--address 127.0.0.1:{port}: no Ray head node answers there" in err
    assert "ray start --head" in err
    assert not output.exists()


def test_ray_backend_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when it is not installed
    with pytest.raises(BackendError, match=r"pip install 'mcqtune\[ray\]'"):
        open_backend(Execution(backend="ray"))


@pytest.mark.parametrize(
    ("execution", "message"),
    [
        (Execution(backend="ray", parallel=2), "--parallel: only with --backend local"),
        (Execution(address="host:6379"), "--address: only with --backend ray"),
        (Execution(cpus_per_job=2, gpus_per_job=1), "--cpus-per-method, --gpus-per-method: only with"),
        (Execution(parallel=0), "--parallel 0: expected 1 or more"),
        (Execution(backend="slurm"), "--backend slurm: expected one of local, ray"),
    ],
)
def test_execution_flags_that_do_not_fit_the_backend(execution, message):
    with pytest.raises(ConfigError, match=message):
        execution.check()


def test_malformed_ray_address():
    with pytest.raises(BackendError, match="expected HOST:PORT"):
        backends.check_reachable("head-node")


# ------------------------------------------------------------------------------------------- slots
def test_cpu_slots_split_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(backends, "visible_gpus", lambda: [])
    monkeypatch.setattr(backends, "available_cores", lambda: 8)
    slots = local_slots(3)
    assert [s["OMP_NUM_THREADS"] for s in slots] == ["2", "2", "2"]  # 3 x 2 <= 8
    assert not any("CUDA_VISIBLE_DEVICES" in s for s in slots)
    assert len(local_slots(20)) == 8  # never more workers than cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert {s["OMP_NUM_THREADS"] for s in local_slots(2)} == {"1"}  # a limit already set is kept


def test_gpu_slots_one_gpu_each(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(backends, "visible_gpus", lambda: ["2", "5"])
    monkeypatch.setattr(backends, "available_cores", lambda: 16)
    slots = local_slots(4)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["2", "5"]
    assert [s["OMP_NUM_THREADS"] for s in slots] == ["8", "8"]


def test_local_parallel_runs_k_at_once_in_distinct_slots(monkeypatch):
    """The scheduling alone (the workers are covered end to end above): 5 jobs, 2 slots."""
    monkeypatch.setattr(backends, "available_cores", lambda: 2)
    monkeypatch.setattr(backends, "visible_gpus", lambda: ["0", "1"])
    running: set[str] = set()
    most = 0
    lock = threading.Lock()
    first_two = threading.Barrier(2, timeout=60)  # passes only when two jobs run at the same time

    def run_one(job, env, started):
        nonlocal most
        device = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert device not in running  # a slot is never given to two jobs at once
            running.add(device)
            most = max(most, len(running))
        if job.name in ("j0", "j1"):
            first_two.wait()
        with lock:
            running.discard(device)
        return {"status": "ok", "method": job.name}

    jobs = [Job(f"j{i}", f"j{i}", "train", {}, "fp", Path(f"runs/j{i}")) for i in range(5)]
    finished: list[str] = []
    records = LocalParallel(2).run(jobs, run_one, lambda job, record: finished.append(job.name))
    assert most == 2
    assert [r["method"] for r in records] == [j.name for j in jobs]  # job order, whatever the finish order
    assert sorted(finished) == [j.name for j in jobs]


STOPPABLE_WORKER = """
import pathlib, signal, sys, time

def save_and_exit(signum, frame):
    pathlib.Path(sys.argv[1]).write_text("checkpoint saved")
    sys.exit(0)

signal.signal(signal.SIGINT, save_and_exit)
pathlib.Path(sys.argv[2]).write_text("running")
time.sleep(60)
"""


def test_local_parallel_interrupt_lets_running_workers_save_and_starts_no_more(monkeypatch, tmp_path):
    """SIGTERM reaches only compare (run_compare turns it into KeyboardInterrupt), here while it writes
    the report of the first method done: the running worker gets SIGINT, which it answers by saving a
    checkpoint, and the waiting method never starts."""
    import subprocess

    monkeypatch.setattr(backends, "visible_gpus", list)
    monkeypatch.setattr(backends, "available_cores", lambda: 2)
    saved, running = tmp_path / "saved", tmp_path / "running"
    started_jobs: list[str] = []

    def run_one(job, env, started):
        started_jobs.append(job.name)
        if job.name == "slow":
            proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_WORKER, str(saved), str(running)])
            started(proc)
            return {"status": "ok" if proc.wait(timeout=60) == 0 else "failed"}
        while not running.exists():  # the slow worker is up (and answers SIGINT) before this one ends
            time.sleep(0.05)
        return {"status": "ok"}

    def interrupted(job, record):
        raise KeyboardInterrupt("stopped by SIGTERM")

    jobs = [Job(name, name, "train", {}, "fp", tmp_path / name) for name in ("slow", "fast", "queued")]
    with pytest.raises(KeyboardInterrupt):
        LocalParallel(2).run(jobs, run_one, interrupted)
    assert saved.read_text() == "checkpoint saved"
    assert started_jobs == ["slow", "fast"]
