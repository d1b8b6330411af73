"""A training run's directory: whether a run starts fresh or resumes, the lock that admits one launch,
the disk it needs, tidying it before training, and writing the artifact and ``metrics.json`` at the end.

Everything that decides whether the directory may be written runs before anything is (docs/RELIABILITY.md);
under several processes the main process alone takes the lock and writes, the others only check.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcqtune.artifacts import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    MANIFEST,
    METRICS,
    save_artifact,
)
from mcqtune.atomic import atomic_write_json, atomic_write_yaml, remove_stale_temporaries, remove_tree
from mcqtune.config import TrainConfig
from mcqtune.distributed import from_main, is_main_process, launched_processes
from mcqtune.evaluation import temperature
from mcqtune.preflight import MIB, DiskSpaceError, check_output_dir, ensure_free_space, mib
from mcqtune.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    clean_checkpoint_dir,
    config_differences,
    estimate_checkpoint_bytes,
    latest_checkpoint,
    list_checkpoints,
    step_of,
)

if TYPE_CHECKING:
    from mcqtune.training.trainer import Trainer

try:
    import fcntl
except ImportError:  # not POSIX: no run-directory lock
    fcntl = None

log = logging.getLogger(__name__)


RESUME_HINT = "free some space and run the same command again: it resumes from the last checkpoint"


def prepare_run_dir(output: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> Checkpoint | None:
    """Decide, before anything is loaded or written, whether this run starts fresh or resumes.

    A finished run is never silently trained again, and checkpoints from a different config are never
    silently mixed with this one: both are errors that say what to do.
    """
    check_output_dir(output)
    if overwrite:
        return None  # the old run is removed later, once every other check has passed
    if (output / METRICS).is_file():
        raise CheckpointError(
            f"{output} already holds a finished run ({METRICS} exists); not training it again. "
            "Pass --overwrite to replace it, or choose another --output"
        )
    checkpoint, problems = latest_checkpoint(output)
    for problem in problems:
        log.warning("skipping a damaged checkpoint: %s", problem)
    if checkpoint is None:
        if problems:
            raise CheckpointError(
                f"{output}: no usable checkpoint ({len(problems)} damaged; first: {problems[0]}). "
                "Pass --overwrite to start over"
            )
        if resume:
            raise CheckpointError(
                f"--resume: {output} holds no checkpoint to resume from; run without --resume to start"
            )
        if (output / MANIFEST).exists() or (output / ADAPTER_DIR).exists():
            raise CheckpointError(
                f"{output} holds an artifact ({MANIFEST}, {ADAPTER_DIR}/) but no checkpoint and no "
                f"{METRICS}; pass --overwrite to replace it, or choose another --output"
            )
        return None
    differences = config_differences(checkpoint.config, config.to_dict())
    if differences:
        raise CheckpointError(
            f"{output} has a checkpoint (step {checkpoint.step}) from a run with a different config:\n  "
            + "\n  ".join(differences)
            + "\nre-run with the same settings to resume, pass --overwrite to start over, "
            "or choose another --output"
        )
    processes = launched_processes()
    if checkpoint.processes != processes:  # the data shards and per-process RNG states would not match
        raise CheckpointError(
            f"{output} has a checkpoint (step {checkpoint.step}) written by {checkpoint.processes} "
            f"process(es), but this launch has {processes}; resume with {checkpoint.processes} "
            f"(train --num-processes {checkpoint.processes}), pass --overwrite to start over, "
            "or choose another --output"
        )
    return checkpoint


def check_fingerprint(checkpoint: Checkpoint, current: dict[str, Any]) -> None:
    saved = checkpoint.fingerprint
    for key, what in (
        ("train_sha256", "the training data file"),
        ("validation_sha256", "the validation data file"),
        ("base_config_hash", "the base model"),
        ("trainable", "the trainable parameters"),
    ):
        if saved.get(key) != current.get(key):
            raise CheckpointError(
                f"{checkpoint.path}: {what} changed since this checkpoint was written; resuming would mix "
                "two different runs. Restore it, pass --overwrite to start over, or choose another --output"
            )


@contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """One training launch per run directory: a second one (the same command started again while the
    first still runs) would interleave checkpoints with it.

    The main process takes the lock and tells the others whether it got it, so the N processes of one
    launch are admitted together and a second launch is refused on all of its processes.
    """
    handle = refusal = None
    if is_main_process():
        output.mkdir(parents=True, exist_ok=True)
        handle = (output / LOCK_FILE).open("a")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                refusal = (
                    f"{output} is being written by another mcqtune train process; "
                    "wait for it to finish or stop it (Ctrl-C saves a checkpoint) before running again"
                )
    try:
        refusal = from_main(refusal)
        if refusal is not None:
            raise CheckpointError(refusal)
        yield
    finally:
        if handle is not None:
            handle.close()


def _clear_previous_run(output: Path) -> None:
    """--overwrite: remove what an earlier run wrote (only mcqtune's own names, never other files)."""
    from mcqtune.tracking import STATE_FILE, TENSORBOARD_DIR

    for name in (METRICS, MANIFEST, CONFIG_FILE, STATE_FILE):
        (output / name).unlink(missing_ok=True)
    for name in (ADAPTER_DIR, CHECKPOINTS_DIR, TENSORBOARD_DIR):
        if (output / name).is_dir():
            remove_tree(output / name)


def ensure_run_fits_disk(output: Path, config: TrainConfig, trainer: Trainer, *, resuming: bool) -> None:
    """While rotating, keep_checkpoints + 1 checkpoints exist at once, plus the final artifact."""
    checkpoint_bytes = estimate_checkpoint_bytes(trainer.trainable)
    saves = math.ceil(trainer.total_steps / config.save_steps) if config.save_steps else 1
    at_once = 1 if resuming else min(saves, config.keep_checkpoints + 1)
    artifact = mib(trainer.trainable_bytes)
    ensure_free_space(
        output,
        at_once * checkpoint_bytes + trainer.trainable_bytes + MIB,
        f"this run ({at_once} checkpoint(s) of ~{mib(checkpoint_bytes)}, a ~{artifact} artifact)",
        "free some space, lower --keep-checkpoints, or choose another --output",
    )


def tidy_run_dir(output: Path, overwrite: bool, checkpoint: Checkpoint | None) -> None:
    """Remove an overwritten run, temporaries of killed writers, and checkpoints newer than the resumed
    one (damaged ones: dead ends)."""
    if overwrite:
        _clear_previous_run(output)
    clean_checkpoint_dir(output)
    remove_stale_temporaries(output)
    if checkpoint is not None:
        for path in list_checkpoints(output):
            if (step_of(path) or 0) > checkpoint.step:
                remove_tree(path)


def save_results(
    output: Path, config: TrainConfig, trainer: Trainer, best_step: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The artifact first, metrics.json last: metrics.json is what marks the run finished."""
    method, objective = trainer.method.name, trainer.objective_name
    manifest = {
        "method": method,
        "method_options": config.method_options,
        "objective": objective,
        "scoring": trainer.objective.scoring,
        **trainer.base_identity,
        "prompt": trainer.objective.encoder.config.to_dict(),
        "packing": trainer.packed,
        "parameters": trainer.parameters.to_dict(),
        "best_step": best_step,
        temperature.MANIFEST_KEY: temperature.manifest_entry(metrics.get("validation"), config.validation),
    }
    try:
        ensure_free_space(output, trainer.trainable_bytes + MIB, "the artifact", RESUME_HINT)
        artifact_bytes = save_artifact(trainer.unwrapped, output, manifest)
        trainer.accelerator.print(f"saved {method} artifact to {output} ({artifact_bytes / 2**20:.2f} MiB)")
        atomic_write_yaml(output / CONFIG_FILE, config.to_dict() | {"objective": objective})
        metrics = {**metrics, "artifact_bytes": artifact_bytes}
        atomic_write_json(output / METRICS, metrics)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(f"disk full while saving the artifact in {output}; {RESUME_HINT}") from exc
        raise
    return metrics
