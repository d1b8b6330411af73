"""Every registered method (presets, LoRA+ and its two optimizer groups included) survives SIGKILL after
a checkpoint: the same train command run again resumes there and ends with the uninterrupted run's
artifact bit for bit and its metrics (wall-clock fields aside).

Each run is ``mcqtune train`` (``mcqtune.cli.main.main``) in a process of its own, forked from one
forkserver that imported torch and mcqtune once, so a run costs its training, not a Python start. One
intra-op thread everywhere (tests/test_reliability.py says why). tests/test_reliability.py kills a real
``python -m mcqtune`` process at a random step of a longer LoRA run; this file covers what differs by
method: the trained tensors, the optimizer's groups and state, and what the artifact holds.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY_OPTIONS, write_jsonl
from mcqtune.artifacts import ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, MANIFEST, METRICS
from mcqtune.methods import METHODS
from mcqtune.training.checkpoint import RESUME_IGNORED_KEYS

STEPS = 6
KILL_AFTER = 2  # the checkpoint that must exist when the process is killed
WALL_CLOCK = ("seconds", "per_second")
TIMEOUT = 300


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    """Six short questions (short rows: a step costs milliseconds), for training and validation."""
    words = ["red", "blue", "green", "black", "white", "gold", "grey", "pink", "brown"]
    rows = [
        {"id": f"q{i}", "question": f"Which colour is {i}?", "choices": words[i : i + 4], "answer": i % 4}
        for i in range(6)
    ]
    return write_jsonl(tmp_path_factory.mktemp("rows") / "rows.jsonl", rows)


def train_argv(method_name: str, model_dir: Path, data: Path, output: Path) -> list[str]:
    """Six steps over six rows in batches of two (an epoch boundary after step 3), a checkpoint every two
    steps, validation every two (best-state restore), a linear schedule with warm-up."""
    argv = ["train", "--method", method_name, "--model", str(model_dir), "--output", str(output)]
    argv += ["--train", str(data), "--validation", str(data), "--batch-size", "2"]
    argv += ["--max-steps", str(STEPS), "--save-steps", "2", "--eval-steps", "2", "--warmup-ratio", "0.2"]
    argv += ["--eval-limit", "2", "--final-eval-limit", "2", "--precision", "fp32", "--seed", "3", "--quiet"]
    for key, value in TINY_OPTIONS.get(method_name, {}).items():
        argv += ["--option", f"{key}={value}"]
    return argv


def run_train(argv: list[str], log: str) -> None:
    """A forked process's whole life: one train command, its output into ``log``, its exit status."""
    from mcqtune.cli.main import main

    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    os._exit(code)


@pytest.fixture(scope="module")
def forked():
    """Processes forked from one server that imported torch and mcqtune with one thread."""
    previous = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # read by the server's torch
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "peft", "mcqtune.cli.main", "mcqtune.methods"])
    yield context
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def start(context, argv: list[str], log: Path):
    process = context.Process(target=run_train, args=(argv, str(log)))
    process.start()
    return process


def finish(context, argv: list[str], log: Path) -> str:
    process = start(context, argv, log)
    process.join(TIMEOUT)
    text = log.read_text() if log.exists() else ""
    assert process.exitcode == 0, f"exit {process.exitcode}:\n{text}"
    return text


def kill_after_checkpoint(context, argv: list[str], output: Path, log: Path) -> None:
    process = start(context, argv, log)
    checkpoint = output / CHECKPOINTS_DIR / f"step-{KILL_AFTER}"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists():
        assert process.is_alive(), f"ended (exit {process.exitcode}) before {checkpoint}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {checkpoint} within {TIMEOUT}s"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.join(TIMEOUT)
    assert process.exitcode == -signal.SIGKILL
    assert not (output / METRICS).exists(), "the run finished before it was killed: nothing was resumed"


def without_wall_clock(value):
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if not any(w in k for w in WALL_CLOCK)}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def assert_same_artifact(expected: Path, actual: Path) -> None:
    """Every file of the artifact equal: tensors bit for bit (fp32), the other files byte for byte."""
    names = sorted(p.name for p in (expected / ADAPTER_DIR).iterdir())
    assert names == sorted(p.name for p in (actual / ADAPTER_DIR).iterdir())
    tensors = 0
    for name in names:
        a, b = expected / ADAPTER_DIR / name, actual / ADAPTER_DIR / name
        if not name.endswith(".safetensors"):
            assert a.read_bytes() == b.read_bytes(), name
            continue
        first, second = load_file(str(a)), load_file(str(b))
        assert first.keys() == second.keys()
        for key in first:
            tensors += 1
            assert first[key].dtype == torch.float32, key
            assert torch.equal(first[key], second[key]), f"{name}:{key} differs"
    assert tensors
    assert json.loads((expected / MANIFEST).read_text()) == json.loads((actual / MANIFEST).read_text())
    configs = [yaml.safe_load((d / CONFIG_FILE).read_text()) for d in (expected, actual)]
    ignored = dict.fromkeys(RESUME_IGNORED_KEYS)
    assert {**configs[0], **ignored} == {**configs[1], **ignored}
    metrics = [without_wall_clock(json.loads((d / METRICS).read_text())) for d in (expected, actual)]
    assert metrics[0] == metrics[1]
    assert not (actual / CHECKPOINTS_DIR).exists()


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_sigkill_after_a_checkpoint_then_rerun_gives_the_uninterrupted_result(
    method_name, forked, tiny_model_dir, rows_file, tmp_path
):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    finish(forked, train_argv(method_name, tiny_model_dir, rows_file, reference), tmp_path / "reference.log")
    argv = train_argv(method_name, tiny_model_dir, rows_file, killed)
    kill_after_checkpoint(forked, argv, killed, tmp_path / "killed.log")
    resumed = finish(forked, argv, tmp_path / "resumed.log")  # the same command again
    resumed_at = re.search(r"resuming from \S*step-(\d+) \(step", resumed)
    assert resumed_at and KILL_AFTER <= int(resumed_at[1]) < STEPS, resumed
    assert_same_artifact(reference, killed)
