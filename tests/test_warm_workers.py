"""Compare and search workers forked warm from multiprocessing's fork server (mcqtune.compare.warm): they
train exactly like fresh interpreters, take the job's thread count, answer Ctrl-C by saving a checkpoint,
and a job whose import-time environment differs from the fork server's restarts it (or, while a forked
worker runs, starts fresh)."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import deadline
from mcqtune.compare.backends import RUN_RECORD
from mcqtune.compare.launch import RUN_LOG, RUN_SPEC, run_job
from mcqtune.compare.plan import TRAIN, CompareSettings, make_job
from mcqtune.compare.runner import run_compare
from mcqtune.compare.warm import FRESH_ENV, THREAD_VARIABLES, _same_process

# Hang guards, not speed bounds: a forked worker that ignored Ctrl-C would train its 10^5 steps.
STOP_SECONDS = 120
HANG_SECONDS = 300


def _compare(output: Path, model_dir: Path) -> dict:
    settings = CompareSettings(
        output=output,
        methods=["lora"],
        quick=True,  # with 6 of its 16 steps (CI time): a LoRA row, trained, checked and scored
        overrides={"model": str(model_dir), "max_steps": 6, "eval_limit": 8, "final_eval_limit": 12},
        echo=False,
    )
    run_compare(settings)
    return json.loads((output / "results.json").read_text(encoding="utf-8"))


def _lora(results: dict) -> tuple[dict, Path]:
    row = next(r for r in results["rows"] if r["method"] == "lora")
    return row, Path(row["run_dir"])


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))


def _rerun(run_dir: Path, where: Path, **changes) -> tuple[CompareSettings, object]:
    """The job behind ``run_dir`` again, in a new run directory, with config ``changes``."""
    spec = json.loads((run_dir / RUN_SPEC).read_text(encoding="utf-8"))
    settings = CompareSettings(output=where, echo=False)
    config = {**spec["config"], "output": str(where / "again"), **changes}
    job = make_job(settings, "again", "lora", TRAIN, config)
    return settings, dataclasses.replace(job, run_dir=where / "again")


@pytest.fixture(scope="module")
def forked_and_fresh(tmp_path_factory, tiny_model_dir):
    """A one-method compare run by forked workers, and its LoRA job again in a fresh interpreter
    (MCQTUNE_FRESH_WORKERS=1): the record and run directory of that fresh run."""
    forked = _compare(tmp_path_factory.mktemp("forked"), tiny_model_dir)
    settings, job = _rerun(_lora(forked)[1], tmp_path_factory.mktemp("fresh"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FRESH_ENV, "1")
        record = run_job(settings, job, {})
    return forked, (record, job.run_dir)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def test_a_forked_worker_trains_and_scores_exactly_like_a_fresh_one(forked_and_fresh):
    forked, (fresh_record, fresh_dir) = forked_and_fresh
    assert {_record(Path(r["run_dir"]))["start"] for r in forked["rows"]} == {"forked"}
    assert (fresh_record["status"], fresh_record["start"]) == ("ok", "fresh")
    row, run_dir = _lora(forked)
    assert row["status"] == "ok"
    metrics, fresh = _metrics(run_dir), _metrics(fresh_dir)
    timing = ("questions_per_second", "seconds")

    def scores(validation: dict) -> dict:  # accuracy, letter distribution, calibration: not its speed
        return {k: v for k, v in validation.items() if k not in timing}

    assert scores(metrics["validation"]) == scores(fresh["validation"])
    curve = ("step", "loss", "val_accuracy")  # the losses and checks, step by step (not timings)
    history = [{k: h.get(k) for k in curve} for h in metrics["history"]]
    assert len(history) > 6 and history == [{k: h.get(k) for k in curve} for h in fresh["history"]]
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    fresh_weights = load_file(str(fresh_dir / "adapter" / "adapter_model.safetensors"))
    assert weights.keys() == fresh_weights.keys()
    assert all(torch.equal(weights[k], fresh_weights[k]) for k in weights)
    # its output reached the run's log, after the launcher's header line
    log = (run_dir / RUN_LOG).read_text(encoding="utf-8")
    assert log.startswith("==== ") and "lora" in log.split("\n", 1)[1]


def test_a_forked_worker_takes_the_jobs_thread_count(forked_and_fresh, tmp_path):
    _, run_dir = _lora(forked_and_fresh[0])
    settings, job = _rerun(run_dir, tmp_path, max_steps=2)
    record = run_job(settings, job, dict.fromkeys(THREAD_VARIABLES, "3"))
    assert record["status"] == "ok", record.get("error")
    assert record["start"] == "forked"
    assert record["threads"] == 3  # the fork server read another count when it imported torch


def _server_environment() -> dict[str, str]:
    """The environment the running fork server process started with (/proc/PID/environ)."""
    from multiprocessing import forkserver

    raw = Path(f"/proc/{forkserver._forkserver._forkserver_pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_an_import_time_variable_that_differs_restarts_the_fork_server(
    forked_and_fresh, tmp_path, monkeypatch
):
    _, run_dir = _lora(forked_and_fresh[0])
    hf_home = str(tmp_path / "hf")
    assert _server_environment().get("HF_HOME") != hf_home
    monkeypatch.setenv("HF_HOME", hf_home)  # transformers reads it when it is imported
    settings, job = _rerun(run_dir, tmp_path, max_steps=2)
    record = run_job(settings, job, {})
    assert record["status"] == "ok", record.get("error")
    assert record["start"] == "forked"
    assert _server_environment()["HF_HOME"] == hf_home  # forked from a server that imported with it


def test_which_environments_a_fork_can_stand_in_for():
    server = {"HF_HOME": "/a", "OMP_NUM_THREADS": "1", "PATH": "/bin", "PYTEST_CURRENT_TEST": "x"}
    assert _same_process({**server, "PYTEST_CURRENT_TEST": "y"}, server)  # volatile: ignored
    assert _same_process({**server, "OMP_NUM_THREADS": "2"}, server)  # applied after the fork
    assert _same_process({**server, "TOKENIZERS_PARALLELISM": "false"}, server)
    # the trackers' variables: read when a run opens its tracker, after the fork (the tracking tests'
    # runs log where their own MLFLOW_TRACKING_URI says)
    assert _same_process({**server, "MLFLOW_TRACKING_URI": "sqlite:///b.db", "WANDB_MODE": "offline"}, server)
    assert not _same_process({**server, "HF_HOME": "/b"}, server)
    assert not _same_process({**server, "HF_HUB_OFFLINE": "1"}, server)  # one more variable
    assert not _same_process({k: v for k, v in server.items() if k != "PATH"}, server)  # one fewer
    # a thread limit the server read at import and the job has not would stick in the fork
    assert not _same_process({k: v for k, v in server.items() if k != "OMP_NUM_THREADS"}, server)
    assert _same_process({**server}, {k: v for k, v in server.items() if k != "OMP_NUM_THREADS"})


def test_ctrl_c_reaches_a_forked_worker_which_saves_a_checkpoint(forked_and_fresh, tmp_path, monkeypatch):
    """Also: while a forked worker runs, a job with another import-time variable starts fresh (stopping
    the fork server under a running worker would lose its exit status)."""
    _, run_dir = _lora(forked_and_fresh[0])
    out = tmp_path / "again"
    settings, job = _rerun(run_dir, tmp_path, max_steps=100_000, save_steps=None, eval_steps=100_000)
    handle: list = []
    result: list[dict] = []
    thread = threading.Thread(target=lambda: result.append(run_job(settings, job, {}, handle.append)))
    with deadline(HANG_SECONDS):
        thread.start()
        give_up = time.monotonic() + STOP_SECONDS
        while "step " not in _log(out) and time.monotonic() < give_up and thread.is_alive():
            time.sleep(0.2)
        other_settings, other = _rerun(run_dir, tmp_path / "other", max_steps=2)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        other_record = run_job(other_settings, other, {})
        handle[0].send_signal(signal.SIGINT)
        thread.join(STOP_SECONDS)
    if thread.is_alive():
        handle[0].kill()
        pytest.fail("the forked worker did not stop on SIGINT")
    assert (other_record["status"], other_record["start"]) == ("ok", "fresh")
    record = result[0]
    assert record["start"] == "forked"
    assert list((out / "checkpoints").glob("step-*")), _log(out)  # saved on Ctrl-C (save_steps: none)


def _log(run_dir: Path) -> str:
    path = run_dir / RUN_LOG
    return path.read_text(encoding="utf-8") if path.exists() else ""
