"""Interrupted runs lose no work and leave nothing half-written (docs/RELIABILITY.md).

The headline tests run ``python -m mcqtune train`` as a real process on the tiny model, kill it
(SIGKILL at a random checkpoint step, or SIGINT), resume, and require the final adapter to be bitwise
equal to an uninterrupted run's and metrics.json to be equal except wall-clock fields. All processes
use one intra-op thread: with several threads, CPU kernels may split reductions differently from run
to run, so even two *uninterrupted* runs differ in the last float bits (measured: up to ~3e-8 after a
few steps); that is the math library, not the resume, and RELIABILITY.md documents it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mcqtune.cli.main import EXIT_USER_ERROR, main
from mcqtune.training.checkpoint import (
    RESUME_IGNORED_KEYS,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)

DETERMINISTIC_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
STEPS = 16
SAVE_STEPS = 2
WALL_CLOCK = ("seconds", "per_second")


def train_args(model_dir: Path, output: Path, *extra: str) -> list[str]:
    # 24 rows in batches of 2 with grad-accum 2: 16 steps cross two epoch boundaries (data order
    # restore), LoRA dropout draws from the torch RNG (RNG restore), validation every 4 steps (best
    # state and history restore), a linear schedule with warmup (scheduler restore).
    return [
        "train",
        "--model",
        str(model_dir),
        "--train",
        "arc_easy",
        "--validation",
        "arc_easy",
        "--output",
        str(output),
        "--max-steps",
        str(STEPS),
        "--save-steps",
        str(SAVE_STEPS),
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--train-limit",
        "24",
        "--eval-steps",
        "4",
        "--eval-limit",
        "8",
        "--final-eval-limit",
        "8",
        "--precision",
        "fp32",
        "--seed",
        "7",
        "--quiet",
        "--option",
        "dropout=0.05",  # not the default (0): the RNG restore needs random draws
        *extra,
    ]


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "mcqtune", *args]


def run_here(args: list[str]) -> None:
    """A run every process-level test compares with, in this process (its imports paid once: CI time),
    on one intra-op thread as the processes under test (DETERMINISTIC_ENV), so its floats are theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)


def run_cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **DETERMINISTIC_ENV}
    return subprocess.run(cli(args), capture_output=True, text=True, env=env, timeout=timeout)


def start_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, **DETERMINISTIC_ENV}
    return subprocess.Popen(cli(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout}s")
        time.sleep(0.005)


def without_wall_clock(value):
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if not any(w in k for w in WALL_CLOCK)}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def assert_same_run(expected: Path, actual: Path) -> None:
    """Bitwise-equal adapter tensors, equal manifest, config and metrics (wall-clock fields aside)."""
    a = load_file(str(expected / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(actual / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.float32
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max()}"
    assert json.loads((expected / "mcqtune.json").read_text()) == json.loads(
        (actual / "mcqtune.json").read_text()
    )
    config_a, config_b = (yaml.safe_load((d / "config.yaml").read_text()) for d in (expected, actual))
    ignored = dict.fromkeys(RESUME_IGNORED_KEYS)  # output dir, checkpoint cadence: not part of the result
    assert {**config_a, **ignored} == {**config_b, **ignored}
    metrics_a = without_wall_clock(json.loads((expected / "metrics.json").read_text()))
    metrics_b = without_wall_clock(json.loads((actual / "metrics.json").read_text()))
    assert metrics_a == metrics_b
    assert not (actual / "checkpoints").exists(), "a finished run keeps no checkpoints"
    assert not [p for p in actual.rglob("*.tmp")], "temporary files were left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_here(train_args(tiny_model_dir, out))
    return out


# ------------------------------------------------------------------------- real processes, real signals


def test_sigkill_at_a_random_step_then_rerun_gives_the_uninterrupted_result(
    reference, tmp_path, tiny_model_dir
):
    seed = int(os.environ.get("MCQTUNE_KILL_SEED", random.randrange(1_000_000)))
    kill_after = random.Random(seed).randrange(SAVE_STEPS, STEPS - 4, SAVE_STEPS)
    print(f"MCQTUNE_KILL_SEED={seed}: SIGKILL as soon as checkpoint step-{kill_after} exists")
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, out)
    proc = start_cli(args)
    wait_for(out / "checkpoints" / f"step-{kill_after}", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists() and not (out / "mcqtune.json").exists()

    result = run_cli(args)  # the same command again: it resumes by itself
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout
    assert_same_run(reference, out)


def test_sigint_saves_a_checkpoint_exits_cleanly_and_says_how_to_resume(reference, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = start_cli(train_args(tiny_model_dir, out, "--save-steps", "4"))
    wait_for(out / "checkpoints" / "step-4", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "checkpoint saved to" in stderr and "resume with:" in stderr
    assert not (out / "metrics.json").exists()
    stopped_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(out))
    assert stopped_at >= 4

    command = shlex.split(stderr.strip().splitlines()[-1])
    assert command[:2] == ["mcqtune", "train"] and "--resume" in command
    result = run_cli(command[1:])  # exactly what the message says
    assert result.returncode == 0, result.stderr
    assert f"step {stopped_at} of {STEPS}" in result.stdout
    assert_same_run(reference, out)


# ------------------------------------------------------------------------- in-process failure injection


class Crash(Exception):
    """Stands in for a power cut right after a checkpoint was written."""


def _flags(model_dir: Path, output: Path, **overrides) -> dict:
    flags = {
        "model": str(model_dir),
        "train": "arc_easy",
        "validation": "arc_easy",
        "output": str(output),
        "max_steps": 6,
        "save_steps": 2,
        "batch_size": 2,
        "train_limit": 8,
        "eval_steps": 2,
        "eval_limit": 4,
        "final_eval_limit": 4,
        "precision": "fp32",
    }
    return {**flags, **overrides}


def crash_after(monkeypatch, step: int) -> None:
    import mcqtune.training.recipe as train_module

    real = train_module.save_checkpoint

    def save_then_crash(*args, **kwargs):
        path = real(*args, **kwargs)
        if kwargs["step"] >= step:
            raise Crash(path)
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)


@pytest.fixture()
def crashed_run(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A run directory with checkpoints step-2 and step-4 and nothing else, as a power cut leaves it."""
    from mcqtune.config import build_config
    from mcqtune.training.recipe import train

    out = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        crash_after(patch, 4)
        with pytest.raises(Crash):
            train(build_config(_flags(tiny_model_dir, out)), show_progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-2", "step-4"]
    assert sorted(p.name for p in out.iterdir()) == [".mcqtune.lock", "checkpoints"]
    return out


def _cli_flags(flags: dict) -> list[str]:
    argv = ["train", "--quiet"]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def test_rerun_with_another_config_is_refused_and_changes_nothing(crashed_run, tiny_model_dir, capsys):
    before = _tree(crashed_run)
    assert main(_cli_flags(_flags(tiny_model_dir, crashed_run, lr=1e-3))) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "different config" in err and "lr: 0.0002 in the checkpoint, 0.001 now" in err
    assert "--overwrite" in err
    assert _tree(crashed_run) == before


def test_changed_training_data_is_refused(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from mcqtune.data import bundled_path

    data = tmp_path / "train.jsonl"
    shutil.copy(bundled_path("arc_easy", "train"), data)
    flags = _flags(tiny_model_dir, tmp_path / "own-data", train=str(data))
    del flags["validation"]
    args = [*_cli_flags(flags), "--no-validation"]
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(Crash):
            main(args)
    with data.open("a") as handle:  # the user edits the file between the crash and the re-run
        handle.write(data.read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "the training data file changed" in err and "step-2" in err


def test_rerun_after_a_crash_resumes_from_the_newest_checkpoint(crashed_run, tiny_model_dir, capsys):
    assert main(_cli_flags(_flags(tiny_model_dir, crashed_run))) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "step-4 (step 4 of 6)" in out
    assert (crashed_run / "metrics.json").is_file() and not (crashed_run / "checkpoints").exists()
    history = json.loads((crashed_run / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]  # restored, not restarted


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(crashed_run, tiny_model_dir, capsys):
    weights = crashed_run / "checkpoints" / "step-4" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a tensor: the file still parses, the checksum does not match
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        verify_checkpoint(weights.parent)
    checkpoint, problems = latest_checkpoint(crashed_run)
    assert checkpoint.step == 2 and len(problems) == 1
    assert main(_cli_flags(_flags(tiny_model_dir, crashed_run))) == 0
    assert "step-2 (step 2 of 6)" in capsys.readouterr().out


def test_an_incomplete_checkpoint_directory_is_never_used(crashed_run):
    (crashed_run / "checkpoints" / "step-4" / "checkpoint.json").unlink()
    checkpoint, problems = latest_checkpoint(crashed_run)
    assert checkpoint.step == 2 and "incomplete" in problems[0]


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    import mcqtune.training.checkpoint as checkpoint_module

    real_save = checkpoint_module.torch.save
    calls = {"n": 0}

    def save_until_disk_is_full(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # checkpoint step-2 writes optimizer.pt and scheduler.pt; step-4 fails
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_disk_is_full)
    out = tmp_path / "run"
    assert main(_cli_flags(_flags(tiny_model_dir, out))) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "disk full while writing checkpoint step-4" in err and "step-2" in err
    assert [p.name for p in list_checkpoints(out)] == ["step-2"]
    verify_checkpoint(out / "checkpoints" / "step-2")
    assert not list((out / "checkpoints").glob(".*")), "the half-written checkpoint was left behind"
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()

    monkeypatch.undo()  # space was freed: the same command finishes the run
    assert main(_cli_flags(_flags(tiny_model_dir, out))) == 0
    assert "step-2 (step 2 of 6)" in capsys.readouterr().out


def test_a_second_process_on_the_same_run_directory_is_refused(crashed_run, tiny_model_dir, capsys):
    import fcntl

    with (crashed_run / ".mcqtune.lock").open("a") as other:  # as the first, still running, process
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _tree(crashed_run)
        assert main(_cli_flags(_flags(tiny_model_dir, crashed_run))) == EXIT_USER_ERROR
        assert "being written by another mcqtune train process" in capsys.readouterr().err
        assert _tree(crashed_run) == before


def test_sigint_and_sigterm_finish_the_step_and_a_second_one_stops_at_once(capsys):
    from mcqtune.training.interruption import StopRequest

    for sig in (signal.SIGINT, signal.SIGTERM):
        # A shell's background job starts with SIGINT ignored: compare with what was there before.
        previous = signal.getsignal(sig)
        with StopRequest() as stop:
            os.kill(os.getpid(), sig)
            assert stop.signal == sig.name  # noted; the loop checkpoints and stops after this step
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), sig)
        assert signal.getsignal(sig) == previous
    assert "saving a checkpoint" in capsys.readouterr().err


def test_finished_run_is_not_retrained_unless_overwrite(reference, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    args = train_args(tiny_model_dir, out, "--max-steps", "2")
    assert main(args) == EXIT_USER_ERROR
    assert "already holds a finished run" in capsys.readouterr().err
    assert _tree(out) == before
    assert main([*args, "--overwrite"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert (out / "notes.txt").read_text() == "mine", "--overwrite removes only mcqtune's own files"


# ------------------------------------------------------------------------- checkpoint and atomic units


def _toy_training():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return model, optimizer, scheduler


def _save_toy(run_dir: Path, step: int, keep: int) -> Path:
    model, optimizer, scheduler = _toy_training()
    return save_checkpoint(
        run_dir,
        step=step,
        trainable=dict(model.named_parameters()),
        best=None,
        optimizer=optimizer,
        scheduler=scheduler,
        state={"stream": {"epoch": 0, "cursor": step}},
        config={"lr": 0.1},
        fingerprint={},
        keep=keep,
    )


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_rotation_keeps_the_last_k_and_the_newest_is_always_complete(tmp_path, keep):
    for step in range(1, 6):
        newest = _save_toy(tmp_path, step, keep)
        names = [p.name for p in list_checkpoints(tmp_path)]
        assert names[-1] == f"step-{step}" and len(names) == min(step, keep)
        verify_checkpoint(newest)
    checkpoint, _ = latest_checkpoint(tmp_path)
    assert checkpoint.step == 5
    state = checkpoint.torch_state("optimizer.pt")  # weights_only: tensors and plain containers only
    assert isinstance(state["state"][0]["exp_avg"], torch.Tensor)


def test_a_failed_checkpoint_write_never_removes_the_previous_one(tmp_path, monkeypatch):
    import mcqtune.training.checkpoint as checkpoint_module

    _save_toy(tmp_path, 1, keep=1)
    monkeypatch.setattr(checkpoint_module, "save_file", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        _save_toy(tmp_path, 2, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-1"]
    verify_checkpoint(tmp_path / "checkpoints" / "step-1")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-1"]


def test_rng_states_round_trip(tmp_path):
    import numpy as np

    from mcqtune.training.checkpoint import capture_rng, restore_rng

    plain, tensors = capture_rng()
    plain = json.loads(json.dumps(plain))  # as stored in checkpoint.json
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng(plain, tensors)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])


def test_atomic_write_crash_keeps_the_old_file(tmp_path, monkeypatch):
    from mcqtune import atomic

    target = tmp_path / "metrics.json"
    atomic.atomic_write_json(target, {"v": 1})
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        atomic.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_directory_crash_keeps_the_old_directory(tmp_path):
    from mcqtune.atomic import atomic_directory

    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(Crash), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise Crash
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_stale_temporaries_of_a_killed_writer_are_cleaned_on_the_next_run(crashed_run, tiny_model_dir):
    leftovers = [
        crashed_run / ".metrics.json.abc.tmp",
        crashed_run / "checkpoints" / ".step-6.xyz.tmp",
    ]
    leftovers[0].write_text("{")
    leftovers[1].mkdir()
    assert main(_cli_flags(_flags(tiny_model_dir, crashed_run))) == 0
    assert not any(p.exists() for p in leftovers)


# ------------------------------------------------------------------------- loading safety


def test_allow_pickle_lets_train_use_a_pickled_model_with_a_warning(
    tmp_path, tiny_model_dir, tokenizer, capsys
):
    from conftest import make_tiny_llama

    model_dir = tmp_path / "pickled-model"
    make_tiny_llama(tokenizer).save_pretrained(model_dir, safe_serialization=False)
    tokenizer.save_pretrained(model_dir)
    assert not list(model_dir.glob("*.safetensors"))
    args = ["train", "--model", str(model_dir), "--train", "arc_easy", "--no-validation", "--quiet"]
    args += ["--output", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2", "--train-limit", "4"]
    assert main(args) == EXIT_USER_ERROR
    assert "--allow-pickle" in capsys.readouterr().err
    assert main([*args, "--allow-pickle"]) == 0
    assert "warning: --allow-pickle" in capsys.readouterr().err
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()  # written as safetensors


def test_trust_remote_code_is_off_unless_asked(tiny_model_dir, monkeypatch):
    from mcqtune import models

    seen = []

    def fake_from_pretrained(path, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise OSError("stop here")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    resolved = models.resolve_model(str(tiny_model_dir))
    for policy in (False, True):
        with models.load_policy(trust_remote_code=policy), pytest.raises(models.ModelError):
            models.load_model(resolved)  # as a method's load_base() calls it, without the flag
    assert seen == [False, True]


# ------------------------------------------------------------------------- the real bundled model


@pytest.mark.slow
def test_bundled_model_sigkill_and_resume_matches_uninterrupted(tmp_path, bundled_resolved):
    def args(out: Path) -> list[str]:
        return [
            "train",
            "--train",
            "arc_easy",
            "--validation",
            "arc_easy",
            "--output",
            str(out),
            "--max-steps",
            "4",
            "--save-steps",
            "1",
            "--batch-size",
            "1",
            "--train-limit",
            "8",
            "--eval-steps",
            "2",
            "--eval-limit",
            "4",
            "--final-eval-limit",
            "4",
            "--max-length",
            "160",
            "--precision",
            "fp32",
            "--quiet",
        ]

    reference_run = tmp_path / "reference"
    run_here(args(reference_run))
    out = tmp_path / "killed"
    proc = start_cli(args(out))
    wait_for(out / "checkpoints" / "step-2", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    result = run_cli(args(out))
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout
    assert_same_run(reference_run, out)
