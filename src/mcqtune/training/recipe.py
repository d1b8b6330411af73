"""The ``train`` command: checks, run directory, validation, checkpoints, final eval, artifact, metrics.

The model, objective, data stream and optimizer step live in :class:`~mcqtune.training.trainer.Trainer`
(shared with the benchmark); this module only orchestrates a run around it. Periodic validation keeps
the best trainable state, which is what gets saved.

Reliability (docs/RELIABILITY.md): everything is validated before the run directory is touched; a
checkpoint (``checkpoint.py``) is written every ``save_steps`` steps and on Ctrl-C/SIGTERM, and
re-running the same command continues from the newest complete one with the same result as an
uninterrupted run; the artifact is written atomically, ``metrics.json`` last.

Several processes (docs/SCALING.md): every process runs this same code on its shard of the data; the
main process alone holds the run lock and writes the run directory (checkpoints, artifact, config,
metrics, progress), the others wait for it at barriers. Checks that read the run directory run on every
process and reach the same verdict.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

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
from mcqtune.config import ConfigError, TrainConfig
from mcqtune.data import DataError, MCQExample, load_examples, resolve_data
from mcqtune.distributed import (
    any_process,
    barrier,
    from_main,
    gather_from_all,
    is_main_process,
    launched_processes,
    rank_and_size,
)
from mcqtune.evaluation import temperature
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.format import format_metrics
from mcqtune.evaluation.metrics import PER_QUESTION, compute_metrics, per_question
from mcqtune.methods.base import load_trainable_state, trainable_state
from mcqtune.models import load_policy, load_tokenizer, resolve_model
from mcqtune.preflight import MIB, DiskSpaceError, check_output_dir, ensure_free_space, mib
from mcqtune.progress import bar, task
from mcqtune.prompt import PromptEncoder
from mcqtune.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    checkpoint_path,
    checkpoint_root,
    clean_checkpoint_dir,
    config_differences,
    estimate_checkpoint_bytes,
    file_fingerprint,
    latest_checkpoint,
    list_checkpoints,
    restore_rng,
    save_checkpoint,
    step_of,
)
from mcqtune.training.trainer import StepResult, Trainer

try:
    import fcntl
except ImportError:  # not POSIX: no run-directory lock
    fcntl = None

log = logging.getLogger(__name__)


_RESUME_HINT = "free some space and run the same command again: it resumes from the last checkpoint"


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None


def load_split(path: Path | None, config: TrainConfig, limit: int | None) -> tuple[list[MCQExample], int]:
    """Validated examples of one data file and how many bad rows ``--on-bad-rows skip`` dropped."""
    if path is None:
        return [], 0
    result = load_examples(
        path, config.format, on_bad_rows=config.on_bad_rows, field_map=config.field_map(), limit=limit
    )
    if result.skipped:
        log.warning("%s: skipped %d bad rows (--on-bad-rows skip)", path, result.skipped)
    if not result.examples:
        raise DataError("no usable rows", file=str(path))
    return result.examples, result.skipped


@dataclass
class TrainData:
    """The validated training and validation rows and where they came from."""

    train_path: Path
    val_path: Path | None
    train: list[MCQExample]
    validation: list[MCQExample]
    skipped: dict[str, int]

    @classmethod
    def load(cls, config: TrainConfig) -> TrainData:
        train_path = resolve_data(config.train, "train")
        val_path = resolve_data(config.validation, "validation") if config.validation else None
        train_rows, train_skipped = load_split(train_path, config, config.train_limit)
        val_rows, val_skipped = load_split(val_path, config, None)
        skipped = {"train": train_skipped, "validation": val_skipped}
        return cls(train_path, val_path, train_rows, val_rows, skipped)

    def fingerprint(self, trainer: Trainer) -> dict[str, Any]:
        """What must not change under a checkpoint: the data files, the base and the trainable shapes."""
        return {
            "train_sha256": file_fingerprint(self.train_path)["sha256"],
            "validation_sha256": (file_fingerprint(self.val_path) or {}).get("sha256"),
            "base_config_hash": trainer.base_identity["base_config_hash"],
            "trainable": {n: list(p.shape) for n, p in trainer.named_trainable.items()},
        }


@dataclass
class RunProgress:
    """What the loop accumulates and a checkpoint carries, besides the trainer's own state."""

    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    real_tokens: int = 0
    train_seconds: float = 0.0
    last_step: int = 0  # the last step trained: total_steps unless max_train_seconds stopped it early
    best_accuracy: float | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the best trainable tensors, what gets saved

    def checkpoint_state(self, total_steps: int, stream: dict[str, int], processes: int) -> dict[str, Any]:
        return {
            "total_steps": total_steps,
            "stream": stream,
            "processes": processes,
            "history": self.history,
            "losses": self.losses,
            "real_tokens": self.real_tokens,
            "train_seconds": self.train_seconds,
            "best_accuracy": self.best_accuracy,
            "best_step": self.best_step,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: torch.device) -> RunProgress:
        state = checkpoint.state
        best_state = checkpoint.best(device)
        return cls(
            history=list(state["history"]),
            losses=list(state["losses"]),
            real_tokens=state["real_tokens"],
            train_seconds=state["train_seconds"],
            last_step=checkpoint.step,
            best_accuracy=state["best_accuracy"] if best_state is not None else None,
            best_step=state["best_step"] if best_state is not None else None,
            best_state=best_state,
        )

    def record_step(self, step: int, result: StepResult, learning_rate: float) -> None:
        self.losses.append(result.loss)
        self.real_tokens += result.real_tokens
        self.train_seconds += result.seconds
        self.last_step = step
        self.history.append({"step": step, "loss": round(result.loss, 5), "lr": learning_rate})

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / max(self.train_seconds, 1e-9)


def validation_name(config: TrainConfig) -> str:
    """How printouts name the validation data: a bundled name as given, a file by its name."""
    return Path(config.validation).name if config.validation else "none"


def _evaluate(
    trainer: Trainer, rows: list[MCQExample], config: TrainConfig, keep_answers: bool = False
) -> dict[str, Any]:
    """Metrics on ``rows``; ``keep_answers`` adds each question's correctness (the final evaluation keeps
    it, so runs scored on the same questions can be compared question by question)."""
    scored = score_examples(
        trainer.unwrapped,
        trainer.objective.encoder,
        rows,
        trainer.objective.scoring,
        batch_size=config.eval_batch_size,
        packed=trainer.packed,
        precision=trainer.precision,
        device=trainer.device,
    )
    metrics = compute_metrics(scored)
    if keep_answers:
        metrics[PER_QUESTION] = per_question(scored)
        if (fit := temperature.temperature_summary(scored)) is not None:  # the artifact's calibration
            metrics[temperature.METRICS_KEY] = fit
    return metrics


def _validate(
    trainer: Trainer, rows: list[MCQExample], config: TrainConfig, step: int, run: RunProgress
) -> None:
    """Periodic validation; the best trainable state after step 0 is kept (and saved at the end)."""
    if not rows:
        return
    name = validation_name(config)
    with task(f"step {step}: validation ({name})" if trainer.accelerator.is_main_process else None):
        m = _evaluate(trainer, rows, config)
    run.history.append({"step": step, "val_accuracy": m["accuracy"], "val_n": m["n"]})
    trainer.accelerator.print(
        f"step {step}: validation ({name}): {m['accuracy'] * 100:.1f}% on {m['n']} rows"
    )
    if step > 0 and (run.best_accuracy is None or m["accuracy"] > run.best_accuracy):
        run.best_accuracy, run.best_step = m["accuracy"], step
        run.best_state = None  # drop the old snapshot before taking the new one: one copy at a time
        run.best_state = trainable_state(trainer.unwrapped)


def _prepare_run_dir(
    output: Path, config: TrainConfig, *, resume: bool, overwrite: bool
) -> Checkpoint | None:
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


def _check_fingerprint(checkpoint: Checkpoint, current: dict[str, Any]) -> None:
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
def _run_lock(output: Path) -> Iterator[None]:
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
    for name in (METRICS, MANIFEST, CONFIG_FILE):
        (output / name).unlink(missing_ok=True)
    for name in (ADAPTER_DIR, CHECKPOINTS_DIR):
        if (output / name).is_dir():
            remove_tree(output / name)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the run can be resumed."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Path):
        self.signal_name = signal_name
        self.step = step
        self.total_steps = total_steps
        self.checkpoint = checkpoint
        super().__init__(
            f"training stopped by {signal_name} after step {step} of {total_steps}; "
            f"checkpoint saved to {checkpoint}"
        )


class _StopRequest:
    """SIGINT/SIGTERM while training: finish the current step, save a checkpoint, then stop.

    A second signal restores the default behaviour at once (the previous checkpoint stays intact).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(
            f"\n{self.signal}: finishing this step and saving a checkpoint "
            "(press Ctrl-C again to stop at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()


def train(
    config: TrainConfig,
    *,
    show_progress: bool = True,
    keep_model: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> TrainResult:
    """Train one method as configured, save its artifact and validation metrics into ``config.output``.

    If ``config.output`` holds checkpoints of the same config, training continues from the newest
    complete one (``resume=True`` makes that required); a finished run there is an error unless
    ``overwrite``. Everything that can be checked (config, data, model, output dir, disk, memory) is
    checked before anything is written.
    """
    with load_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), ExitStack() as held:
        return _train(config, show_progress, keep_model, resume, overwrite, trust_remote_code, held)


def _train(
    config: TrainConfig,
    show_progress: bool,
    keep_model: bool,
    resume: bool,
    overwrite: bool,
    trust_remote_code: bool,
    held: ExitStack,
) -> TrainResult:
    if not config.output:
        raise ConfigError("an output directory is required (--output DIR)")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --output and --overwrite replaces it: pick one")
    output = Path(config.output)
    checkpoint = _prepare_run_dir(output, config, resume=resume, overwrite=overwrite)
    set_seed(config.seed)
    resolved = resolve_model(config.model)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    encoder = PromptEncoder(tokenizer, config.prompt_config())
    data = TrainData.load(config)
    trainer = Trainer(config, resolved, encoder, data.train, data_file=data.train_path)
    fingerprint = data.fingerprint(trainer)
    if checkpoint is not None:
        _check_fingerprint(checkpoint, fingerprint)
    _ensure_run_fits_disk(output, config, trainer, resuming=checkpoint is not None)

    # Every check passed: from here on the run directory is written.
    held.enter_context(_run_lock(output))
    if is_main_process():
        _tidy_run_dir(output, overwrite, checkpoint)
    barrier()
    say = trainer.accelerator.print
    say(f"method {trainer.method.name}: {trainer.parameters.describe()}")
    say(trainer.describe_batch())
    objective = trainer.objective
    say(f"objective {objective.name} (scoring {objective.scoring}), precision {trainer.precision}")
    eval_rows = data.validation[: config.eval_limit] if config.eval_limit else data.validation
    if checkpoint is not None:
        run = _resume(trainer, checkpoint)
    else:
        run = RunProgress()
        _validate(trainer, eval_rows, config, 0, run)
    start_step = (checkpoint.step if checkpoint is not None else 0) + 1
    _run_steps(trainer, config, output, fingerprint, run, start_step, eval_rows, show_progress)

    if run.best_state is not None:
        load_trainable_state(trainer.unwrapped, run.best_state)
        best = f"step {run.best_step} ({run.best_accuracy * 100:.1f}% on validation)"
        say(f"keeping the best checkpoint: {best}")
    trainer.unwrapped.eval()
    final = None
    if data.validation:
        final_rows = (
            data.validation[: config.final_eval_limit] if config.final_eval_limit else data.validation
        )
        name = validation_name(config)
        with task(f"final validation ({name})" if show_progress and is_main_process() else None):
            final = _evaluate(trainer, final_rows, config, keep_answers=True)
        say(
            format_metrics(final, f"validation ({name}, {trainer.method.name}, {objective.scoring} scoring):")
        )
    metrics = _results(config, trainer, data, run, final)
    if is_main_process():
        metrics = _save_results(output, config, trainer, run, metrics)
        remove_tree(checkpoint_root(output))  # finished: checkpoints are only for resuming
    metrics = from_main(metrics)  # also: every process returns once the run directory is complete
    model = trainer.unwrapped if keep_model else None
    return TrainResult(output=output, metrics=metrics, history=run.history, model=model)


def _ensure_run_fits_disk(output: Path, config: TrainConfig, trainer: Trainer, *, resuming: bool) -> None:
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


def _tidy_run_dir(output: Path, overwrite: bool, checkpoint: Checkpoint | None) -> None:
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


def _resume(trainer: Trainer, checkpoint: Checkpoint) -> RunProgress:
    run = RunProgress.from_checkpoint(checkpoint, trainer.device)
    trainer.restore(checkpoint, checkpoint.state["stream"])
    restore_rng(*checkpoint.rng(rank_and_size()[0]))  # last: nothing may draw after it
    trainer.accelerator.print(
        f"resuming from {checkpoint.path} (step {checkpoint.step} of {trainer.total_steps})"
    )
    return run


def _run_steps(
    trainer: Trainer,
    config: TrainConfig,
    output: Path,
    fingerprint: dict[str, Any],
    run: RunProgress,
    start_step: int,
    eval_rows: list[MCQExample],
    show_progress: bool,
) -> None:
    """The loop: step, log, validate every ``eval_steps``, checkpoint every ``save_steps`` and on a
    stop request (then raise :class:`TrainingInterrupted`); stop after the step that reaches
    ``max_train_seconds`` of training (validated there, so the time-limited run keeps its best state)."""
    total = trainer.total_steps

    def save(step: int) -> Path:
        """The main process writes; the others hand it their RNG states and wait until it is done."""
        rng = gather_from_all([capture_rng()])
        if is_main_process():
            save_checkpoint(
                output,
                step=step,
                best=run.best_state,
                state=run.checkpoint_state(total, trainer.stream_state(), trainer.processes),
                config=config.to_dict(),
                fingerprint=fingerprint,
                keep=config.keep_checkpoints,
                rng=rng,
                **trainer.state_for_checkpoint(),
            )
        barrier()
        return checkpoint_path(output, step)

    show = show_progress and is_main_process()
    progress = bar(total, f"train {trainer.method.name}", "step", start_step - 1, enabled=show)
    with _StopRequest() as stop, closing(progress):
        for step in range(start_step, total + 1):
            run.record_step(step, trainer.step(), trainer.learning_rate)
            progress.update(1)
            progress.set_postfix(
                loss=f"{np.mean(run.losses[-10:]):.3f}", tok_s=f"{run.tokens_per_second:.0f}"
            )
            limit = config.max_train_seconds
            # every process must stop at the same step: the main process's clock alone would not do
            out_of_time = limit is not None and any_process(run.train_seconds >= limit)
            last = step == total or out_of_time
            if step % config.eval_steps == 0 or last:
                _validate(trainer, eval_rows, config, step, run)
            due = config.save_steps is not None and (step % config.save_steps == 0 or step == total)
            # read once (a signal may arrive while the checkpoint is written); all processes stop together
            seen = stop.signal
            stopping = (seen or "a signal to another process") if any_process(seen is not None) else None
            if due or stopping:
                saved = save(step)
            if stopping:
                raise TrainingInterrupted(stopping, step, total, saved)
            if out_of_time and step < total:
                trainer.accelerator.print(
                    f"time budget reached: {run.train_seconds:.1f} s of training >= {limit:g} s "
                    f"(--max-train-seconds); stopped after step {step} of {total}"
                )
                break


def _results(
    config: TrainConfig, trainer: Trainer, data: TrainData, run: RunProgress, final: dict[str, Any] | None
) -> dict[str, Any]:
    """What metrics.json says about the run (every process computes it; the main process writes it)."""
    metrics: dict[str, Any] = {
        "method": trainer.method.name,
        "objective": trainer.objective_name,
        "parameters": trainer.parameters.to_dict(),
        "train": {
            "steps": run.last_step,  # below planned_steps when a time budget stopped the run
            "planned_steps": trainer.total_steps,
            "processes": trainer.processes,
            "global_batch_size": trainer.global_batch_size,
            "examples_seen": run.last_step * trainer.global_batch_size,
            "seconds": round(run.train_seconds, 2),
            "real_tokens": run.real_tokens,
            "tokens_per_second": round(run.tokens_per_second, 1),
            "final_loss": round(run.losses[-1], 5),
            "mean_loss_last_10": round(float(np.mean(run.losses[-10:])), 5),
        },
        "data": {"train": config.train, "validation": config.validation},
        "history": run.history,
    }
    if any(data.skipped.values()):
        metrics["bad_rows_skipped"] = data.skipped
    if final is not None:
        zero_shot = next(
            (h["val_accuracy"] for h in run.history if h["step"] == 0 and "val_accuracy" in h), None
        )
        metrics["validation"] = final
        metrics["zero_shot_val_accuracy_subset"] = zero_shot
    return metrics


def _save_results(
    output: Path, config: TrainConfig, trainer: Trainer, run: RunProgress, metrics: dict[str, Any]
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
        "best_step": run.best_step if run.best_step is not None else run.last_step,
        temperature.MANIFEST_KEY: temperature.manifest_entry(metrics.get("validation"), config.validation),
    }
    try:
        ensure_free_space(output, trainer.trainable_bytes + MIB, "the artifact", _RESUME_HINT)
        artifact_bytes = save_artifact(trainer.unwrapped, output, manifest)
        trainer.accelerator.print(f"saved {method} artifact to {output} ({artifact_bytes / 2**20:.2f} MiB)")
        atomic_write_yaml(output / CONFIG_FILE, config.to_dict() | {"objective": objective})
        metrics = {**metrics, "artifact_bytes": artifact_bytes}
        atomic_write_json(output / METRICS, metrics)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(f"disk full while saving the artifact in {output}; {_RESUME_HINT}") from exc
        raise
    return metrics
