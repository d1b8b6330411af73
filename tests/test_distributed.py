"""Data-parallel training and evaluation, proven with real processes on CPU (gloo): docs/SCALING.md.

Every multi-process test launches ``python -m mcqtune ... --num-processes 2`` (torchrun underneath) or
torchrun itself on the tiny random Llama saved to a directory, with one intra-op thread per process
(test_reliability.py says why), each bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mcqtune.cli.main import EXIT_USER_ERROR, main
from mcqtune.training.checkpoint import list_checkpoints
from mcqtune.training.stream import BatchStream
from test_reliability import DETERMINISTIC_ENV, _tree, assert_same_run, run_here, without_wall_clock
from test_reliability import train_args as reliability_train_args

TIMEOUT = 300  # seconds per launch; a 2-process run of these sizes takes ~30 s on 2 cores
# Loss curves of 2 processes x batch 2 and 1 process x batch 4 (the same global batches, LoRA without
# dropout so no random draw differs): the same examples give the same gradient up to float summation
# order (DDP averages two half-batch means; one process takes one mean), ~1e-7 relative per step.
# metrics.json rounds losses to 5 decimals; 1e-4 allows a rounding boundary and a few steps of drift
# while catching any real difference (a rank training on the wrong shard, a scheduler stepping twice:
# those move the loss by > 1e-3 here). Measured: equal to all 5 decimals.
LOSS_TOLERANCE = 1e-4
# The adapters after 6 Adam steps (lr 2e-4): measured max difference 3.3e-7. Adam normalises each
# gradient, so a near-zero gradient's rounding can move an element by a fraction of lr per step; 1e-5
# is 30x the measured drift and 20x below one Adam step, so training on other data cannot pass.
WEIGHT_TOLERANCE = 1e-5


def env() -> dict[str, str]:
    return {**os.environ, **DETERMINISTIC_ENV}


def run_mcqtune(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    launch = ["--num-processes", str(processes)] if processes > 1 else []
    command = [sys.executable, "-m", "mcqtune", *args, *launch]
    return subprocess.run(command, capture_output=True, text=True, env=env(), timeout=TIMEOUT)


def accelerate_launch(args: list[str], processes: int) -> list[str]:
    """``accelerate launch`` as on GPUs (--multi_gpu starts torchrun; on CPUs its processes use gloo)."""
    launch = ["--multi_gpu", f"--num_processes={processes}", "--num_machines=1", "--dynamo_backend=no"]
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "mcqtune", *args]


def torchrun(args: list[str], processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "mcqtune",
        *args,
    ]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc), parents first."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in process_tree(int(child)))]


def train_args(model_dir: Path, output: Path, batch_size: int, *extra: str) -> list[str]:
    """test_reliability's run (checkpoints every 2 steps, validation, fp32, seed 7), made smaller: 21 rows
    in global batches of 4 (x grad-accum 2), so every epoch ends in a 1-question batch and one process
    has an empty shard (the stand-in question, weight 0); 6 steps cross an epoch boundary."""
    smaller = ("--max-steps", "6", "--train-limit", "21", "--eval-steps", "3")
    return reliability_train_args(model_dir, output, *smaller, "--batch-size", str(batch_size), *extra)


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ------------------------------------------------------------------------------------- the data stream


def test_shards_of_n_processes_are_the_one_process_batch_and_resume_per_rank():
    features = list(range(21))
    one = BatchStream(features, lambda f: f % 5, batch_size=4, seed=3)
    ranks = [
        BatchStream(features, lambda f: f % 5, batch_size=2, seed=3, rank=r, processes=2) for r in (0, 1)
    ]
    assert ranks[0].batches_per_epoch == one.batches_per_epoch == 6
    for _ in range(14):  # past an epoch boundary
        whole = next(one)
        shards = [next(stream) for stream in ranks]
        real = [s for s in shards if s.weight]
        assert [f for s in real for f in s.features] == whole.features
        assert all(s.global_size == len(whole.features) for s in shards)
        # the mean over processes of the weighted shard means (DDP's gradient) is the global mean
        means = [s.weight * sum(s.features) / len(s.features) for s in shards]
        assert sum(means) / 2 == pytest.approx(sum(whole.features) / len(whole.features))
        if len(whole.features) == 1:  # one process has nothing: it runs a stand-in with weight 0
            assert [s.weight for s in shards] == [0.0, 2.0]
    saved = [stream.state() for stream in ranks]
    expected = [[next(stream).features for _ in range(4)] for stream in ranks]
    for stream, state, after in zip(ranks, saved, expected, strict=True):
        fresh = BatchStream(features, lambda f: f % 5, batch_size=2, seed=3, rank=stream.rank, processes=2)
        fresh.restore(state)
        assert [next(fresh).features for _ in range(4)] == after


# -------------------------------------------------------------------- training: 2 processes vs 1


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """The same global batch (4 questions x grad-accum 2) and seed: 1 process x 4, 2 processes x 2
    (started by ``accelerate launch``)."""
    root = tmp_path_factory.mktemp("dp")
    one, two = root / "one", root / "two"
    run_here(train_args(tiny_model_dir, one, 4, "--option", "dropout=0"))
    command = accelerate_launch(train_args(tiny_model_dir, two, 2, "--option", "dropout=0"), 2)
    result = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return one, two


def test_two_processes_train_like_one_at_the_same_global_batch(one_and_two):
    one, two = one_and_two
    m1, m2 = metrics(one), metrics(two)
    assert (m1["train"]["processes"], m2["train"]["processes"]) == (1, 2)
    assert m1["train"]["global_batch_size"] == m2["train"]["global_batch_size"] == 8
    assert m1["train"]["examples_seen"] == m2["train"]["examples_seen"] == 48
    assert m1["train"]["real_tokens"] == m2["train"]["real_tokens"]  # each question trained on once
    for m in (m1, m2):  # the positions computed (padding included) are summed over processes too
        assert m["train"]["computed_tokens"] >= m["train"]["real_tokens"]
    steps1 = [h for h in m1["history"] if "loss" in h]
    steps2 = [h for h in m2["history"] if "loss" in h]
    assert [h["step"] for h in steps1] == [h["step"] for h in steps2] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(steps1, steps2, strict=True):
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOLERANCE, (a, b)
        # the scheduler steps once per optimizer step, not once per process: the same LR each step
        assert a["lr"] == b["lr"]
    validations = [[h for h in m["history"] if "val_accuracy" in h] for m in (m1, m2)]
    assert validations[0] == validations[1] and len(validations[0]) == 3


def assert_same_manifest(one: Path, two: Path) -> None:
    """The two runs' manifests are equal, but for the calibration temperature: it is fitted on the final
    scores, which two processes reproduce to the weight tolerance, not bit for bit (the same fit, to its
    third digit). A run without validation has no fit at all, in both."""
    manifests = [json.loads((run / "mcqtune.json").read_text()) for run in (one, two)]
    fits = [manifest.pop("calibration") for manifest in manifests]
    assert manifests[0] == manifests[1]
    assert (fits[0] is None) == (fits[1] is None), fits
    if fits[0] is not None:
        assert fits[0]["temperature"] == pytest.approx(fits[1]["temperature"], rel=1e-3)
        assert {k: v for k, v in fits[0].items() if k != "temperature"} == {
            k: v for k, v in fits[1].items() if k != "temperature"
        }


def test_two_processes_write_one_artifact_in_the_same_format(one_and_two):
    one, two = one_and_two
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*")) == sorted(
        p.relative_to(two).as_posix() for p in two.rglob("*")
    )
    assert_same_manifest(one, two)
    a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert torch.allclose(a[name], b[name], rtol=0, atol=WEIGHT_TOLERANCE), name
        if "lora_B" in name:  # zero at the start: training moved it by far more than the tolerance
            assert a[name].abs().max() > 10 * WEIGHT_TOLERANCE, name


# ------------------------------------------------------------------------------ sharded evaluation


SCORINGS = [["--scoring", "cloze"], ["--scoring", "letter", "--permutations", "cyclic"]]


@pytest.mark.parametrize("extra", SCORINGS)
def test_sharded_eval_gives_exactly_the_single_process_metrics(tmp_path, tiny_model_dir, extra, capsys):
    outputs = []
    for processes in (1, 2):
        out = tmp_path / f"eval-{processes}.json"
        args = ["eval", "--model", str(tiny_model_dir), "--data", "arc_easy", "--limit", "13"]
        args += ["--batch-size", "4", "--output", str(out), *extra]
        if processes == 1:
            run_here(args)
            printed = capsys.readouterr().out
        else:
            result = run_mcqtune(args, processes)
            assert result.returncode == 0, result.stderr[-3000:]
            printed = result.stdout
        # one process group, one reporter: two unconnected processes would each print and write
        assert printed.count(f"wrote {out}") == 1
        outputs.append(without_wall_clock(json.loads(out.read_text())))
    assert outputs[0]["n"] == 13
    assert outputs[0] == outputs[1]


# -------------------------------------------------------------------------------------------- resume


def test_resume_with_the_same_processes_matches_uninterrupted_and_other_counts_are_refused(
    tmp_path, tiny_model_dir, capsys
):
    """LoRA with dropout: every process draws its own masks, so this also proves per-rank RNG restore."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_mcqtune(train_args(tiny_model_dir, reference, 2), 2).returncode == 0

    # torchrun directly (the standard launcher), killed with its workers once step 4 is checkpointed
    command = torchrun(train_args(tiny_model_dir, killed, 2), 2)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + TIMEOUT
    while not (killed / "checkpoints" / "step-4").is_dir():
        assert proc.poll() is None, "training ended before its step-4 checkpoint"
        assert time.monotonic() < deadline, "no step-4 checkpoint in time"
        time.sleep(0.05)
    for pid in process_tree(proc.pid):  # torchrun starts each worker in a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert list_checkpoints(killed) and not (killed / "metrics.json").exists()

    # one process on a 2-process checkpoint: refused before anything is loaded or written
    before = _tree(killed)
    assert main(train_args(tiny_model_dir, killed, 2)) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "written by 2 process(es), but this launch has 1" in err and "--num-processes 2" in err
    assert _tree(killed) == before

    # two processes on a one-process checkpoint: refused on both, naming both counts
    newest = list_checkpoints(killed)[-1] / "checkpoint.json"
    saved = newest.read_text()
    meta = json.loads(saved)
    meta["state"]["processes"] = 1  # as a one-process run would have written it
    newest.write_text(json.dumps(meta))
    refused = run_mcqtune(train_args(tiny_model_dir, killed, 2), 2)
    assert refused.returncode != 0
    assert refused.stderr.count("written by 1 process(es), but this launch has 2") == 2
    newest.write_text(saved)

    resumed = run_mcqtune(train_args(tiny_model_dir, killed, 2), 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_run(reference, killed)


def test_a_second_launch_on_a_locked_run_directory_is_refused_on_every_process(tmp_path, tiny_model_dir):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with (run / ".mcqtune.lock").open("a") as first:  # as the first, still running, launch
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _tree(run)
        result = run_mcqtune(train_args(tiny_model_dir, run, 2), 2)
    assert result.returncode != 0
    assert result.stderr.count("being written by another mcqtune train process") == 2  # both ranks
    assert _tree(run) == before


# ------------------------------------------------------------------------------ the real bundled model

# bf16 autocast (what `train` uses on this CPU): each process pads its own shard, so the bf16 matmuls
# run on other shapes than one process's and round differently (bf16 keeps 8 bits: ~0.4% per product).
# Over 3 steps that stays far below the 0.1-0.5 a loss moves when trained on other questions.
BF16_LOSS_TOLERANCE = 2e-2


@pytest.mark.slow
def test_bundled_model_trains_with_two_processes_like_one(tmp_path):
    def args(out: Path, batch_size: int) -> list[str]:
        return [
            "train",
            "--train",
            "medmcqa",
            "--no-validation",
            "--output",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            str(batch_size),
            "--train-limit",
            "12",
            "--max-length",
            "160",
            "--quiet",
        ]

    one, two = tmp_path / "one", tmp_path / "two"
    run_here(args(one, 4))
    result = run_mcqtune(args(two, 2), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    m1, m2 = metrics(one), metrics(two)
    assert (
        m2["train"]["processes"] == 2 and m1["train"]["global_batch_size"] == m2["train"]["global_batch_size"]
    )
    for a, b in zip(m1["history"], m2["history"], strict=True):
        assert a["lr"] == b["lr"] and abs(a["loss"] - b["loss"]) <= BF16_LOSS_TOLERANCE, (a, b)
    assert_same_manifest(one, two)
