"""The ``train`` command: checks, run directory, validation, checkpoints, final eval, artifact, metrics.

The model, objective, data stream and optimizer step live in :class:`~mcqtune.training.trainer.Trainer`
(shared with the benchmark); this module only orchestrates a run around it: ``train()`` reads top to
bottom. The run directory (fresh or resumed, lock, disk, writing the results) is ``run_dir.py``; stopping
on a signal is ``interruption.py``; how validation scores is :class:`~mcqtune.evaluation.setup.EvalSetup`,
the same set-up compare's worker scores with. Periodic validation keeps the best trainable state, which
is what gets saved.

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

import logging
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from mcqtune import tracking
from mcqtune.artifacts import ADAPTER_DIR, METRICS
from mcqtune.atomic import remove_tree
from mcqtune.config import ConfigError, TrainConfig
from mcqtune.data import DataRef, MCQExample, data_refs, load_source, load_split  # noqa: F401 (load_split: re-exported)
from mcqtune.distributed import (
    any_process,
    barrier,
    from_main,
    gather_from_all,
    is_main_process,
    rank_and_size,
)
from mcqtune.evaluation import temperature
from mcqtune.evaluation.format import format_metrics
from mcqtune.evaluation.metrics import PER_QUESTION, ScoredExamples, compute_metrics, per_question
from mcqtune.evaluation.setup import EvalSetup
from mcqtune.methods.base import load_trainable_state, trainable_state
from mcqtune.models import load_policy, load_tokenizer, resolve_model
from mcqtune.progress import bar, task
from mcqtune.prompt import PromptEncoder
from mcqtune.training.checkpoint import (
    Checkpoint,
    capture_rng,
    checkpoint_path,
    checkpoint_root,
    file_fingerprint,
    restore_rng,
    save_checkpoint,
)
from mcqtune.training.interruption import StopRequest, TrainingInterrupted
from mcqtune.training.memory import release_freed_memory
from mcqtune.training.run_dir import (
    check_fingerprint,
    ensure_run_fits_disk,
    prepare_run_dir,
    run_lock,
    save_results,
    tidy_run_dir,
)
from mcqtune.training.trainer import StepResult, Trainer, run_precision

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None


@dataclass
class TrainData:
    """The validated training and validation rows and where they came from."""

    train_ref: DataRef
    val_ref: DataRef | None
    train: list[MCQExample]
    validation: list[MCQExample]
    skipped: dict[str, int]
    sources: dict[str, dict[str, Any] | None]  # what was read (DataRef.record), for metrics.json

    @classmethod
    def load(cls, config: TrainConfig) -> TrainData:
        train_ref, val_ref = data_refs(config)
        train = load_source(train_ref, config, config.train_limit)
        val = load_source(val_ref, config, None) if val_ref is not None else None
        skipped = {"train": train.skipped, "validation": val.skipped if val else 0}
        sources = {"train": train.source, "validation": val.source if val else None}
        return cls(train_ref, val_ref, train.examples, val.examples if val else [], skipped, sources)

    def _identity(self, role: str, ref: DataRef | None) -> str | None:
        """A data file's sha256; a data set's fingerprint (``datasets``')."""
        if ref is None:
            return None
        if ref.is_file:
            return file_fingerprint(ref.path)["sha256"]
        return (self.sources[role] or {}).get("fingerprint")

    def fingerprint(self, trainer: Trainer) -> dict[str, Any]:
        """What must not change under a checkpoint: the data, the base and the trainable shapes."""
        return {
            "train_sha256": self._identity("train", self.train_ref),
            "validation_sha256": self._identity("validation", self.val_ref),
            "base_config_hash": trainer.base_identity["base_config_hash"],
            "trainable": {n: list(p.shape) for n, p in trainer.named_trainable.items()},
        }


@dataclass
class RunProgress:
    """What the loop accumulates and a checkpoint carries, besides the trainer's own state."""

    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    real_tokens: int = 0
    # every position computed, padding included; None when resumed from a checkpoint that predates it
    computed_tokens: int | None = 0
    train_seconds: float = 0.0
    last_step: int = 0  # the last step trained: total_steps unless max_train_seconds stopped it early
    best_accuracy: float | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the best trainable tensors, what gets saved
    # The best state's validation scores, for a final evaluation of the same rows; not checkpointed.
    best_scored: ScoredExamples | None = field(default=None, repr=False, compare=False)
    # Called with each history entry as it is recorded (the experiment trackers); not checkpointed.
    on_record: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)
    # Told every validation check's (step, metrics); may raise to stop the run (a pruned search trial).
    on_validation: Callable[[int, dict[str, Any]], None] | None = field(
        default=None, repr=False, compare=False
    )

    def record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if self.on_record is not None:
            self.on_record(entry)

    def checkpoint_state(self, total_steps: int, stream: dict[str, int], processes: int) -> dict[str, Any]:
        return {
            "total_steps": total_steps,
            "stream": stream,
            "processes": processes,
            "history": self.history,
            "losses": self.losses,
            "real_tokens": self.real_tokens,
            "computed_tokens": self.computed_tokens,
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
            computed_tokens=state.get("computed_tokens"),
            train_seconds=state["train_seconds"],
            last_step=checkpoint.step,
            best_accuracy=state["best_accuracy"] if best_state is not None else None,
            best_step=state["best_step"] if best_state is not None else None,
            best_state=best_state,
        )

    def record_step(self, step: int, result: StepResult, learning_rate: float) -> None:
        self.losses.append(result.loss)
        self.real_tokens += result.real_tokens
        if self.computed_tokens is not None:
            self.computed_tokens += result.computed_tokens
        self.train_seconds += result.seconds
        self.last_step = step
        self.record({"step": step, "loss": round(result.loss, 5), "lr": learning_rate})

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / max(self.train_seconds, 1e-9)

    @property
    def real_token_share(self) -> float | None:
        """Real tokens over the tokens computed: the share of the compute that was not padding."""
        if not self.computed_tokens:
            return None
        return self.real_tokens / self.computed_tokens


def validation_name(config: TrainConfig) -> str:
    """How printouts name the validation data (``DataRef.name``)."""
    return DataRef.parse(config.validation, "validation").name if config.validation else "none"


def _score(trainer: Trainer, rows: list[MCQExample], setup: EvalSetup) -> ScoredExamples:
    return setup.score(trainer.unwrapped, trainer.objective.encoder, rows, trainer.objective.scoring)


def _evaluate(scored: ScoredExamples, keep_answers: bool = False) -> dict[str, Any]:
    """Metrics of ``scored``; ``keep_answers`` adds each question's correctness (the final evaluation
    keeps it, so runs scored on the same questions can be compared question by question)."""
    metrics = compute_metrics(scored)
    if keep_answers:
        metrics[PER_QUESTION] = per_question(scored)
        if (fit := temperature.temperature_summary(scored)) is not None:  # the artifact's calibration
            metrics[temperature.METRICS_KEY] = fit
    return metrics


@dataclass
class Validation:
    """Periodic validation's rows, setup and display name, fixed for the whole run."""

    rows: list[MCQExample]
    setup: EvalSetup
    name: str


def _validate(trainer: Trainer, validation: Validation, step: int, run: RunProgress) -> None:
    """Periodic validation; the best trainable state after step 0 is kept (and saved at the end)."""
    if not validation.rows:
        return
    name = validation.name
    with task(f"step {step}: validation ({name})" if trainer.accelerator.is_main_process else None):
        scored = _score(trainer, validation.rows, validation.setup)
    m = _evaluate(scored)
    run.record({"step": step, "val_accuracy": m["accuracy"], "val_n": m["n"]})
    trainer.accelerator.print(
        f"step {step}: validation ({name}): {m['accuracy'] * 100:.1f}% on {m['n']} rows"
    )
    if step > 0 and (run.best_accuracy is None or m["accuracy"] > run.best_accuracy):
        run.best_accuracy, run.best_step = m["accuracy"], step
        run.best_state = None  # drop the old snapshot before taking the new one: one copy at a time
        run.best_state = trainable_state(trainer.unwrapped)
        run.best_scored = scored
    if run.on_validation is not None:
        run.on_validation(step, m)


def train(
    config: TrainConfig,
    *,
    show_progress: bool = True,
    keep_model: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one method as configured, save its artifact and validation metrics into ``config.output``.

    If ``config.output`` holds checkpoints of the same config, training continues from the newest
    complete one (``resume=True`` makes that required); a finished run there is an error unless
    ``overwrite``. Everything that can be checked (config, data, model, output dir, disk, memory) is
    checked before anything is written. ``on_validation(step, metrics)`` hears every validation check
    (a search trial reports it to its pruner, and raises to stop a bad trial early).
    """
    with load_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), ExitStack() as held:
        return _train(
            config, show_progress, keep_model, resume, overwrite, trust_remote_code, held, on_validation
        )


def _train(
    config: TrainConfig,
    show_progress: bool,
    keep_model: bool,
    resume: bool,
    overwrite: bool,
    trust_remote_code: bool,
    held: ExitStack,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    if not config.output:
        raise ConfigError("an output directory is required (--output DIR)")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --output and --overwrite replaces it: pick one")
    output = Path(config.output)
    tracking.check_installed(tracking.parse_report_to(config.report_to))
    run_precision(config)  # QLoRA's compute_dtype: auto is compared with a checkpoint as it will run
    checkpoint = prepare_run_dir(output, config, resume=resume, overwrite=overwrite)
    set_seed(config.seed)
    resolved = resolve_model(config.model)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    encoder = PromptEncoder(tokenizer, config.prompt_config())
    data = TrainData.load(config)
    trainer = Trainer(config, resolved, encoder, data.train, data_file=data.train_ref.label)
    fingerprint = data.fingerprint(trainer)
    if checkpoint is not None:
        check_fingerprint(checkpoint, fingerprint)
    ensure_run_fits_disk(output, config, trainer, resuming=checkpoint is not None)

    # Every check passed: from here on the run directory is written.
    held.enter_context(run_lock(output))
    if is_main_process():
        tidy_run_dir(output, overwrite, checkpoint)
    barrier()
    say = trainer.accelerator.print
    say(f"method {trainer.method.name}: {trainer.parameters.describe()}")
    say(trainer.describe_batch())
    objective = trainer.objective
    say(f"objective {objective.name} (scoring {objective.scoring}), precision {trainer.precision}")
    periodic = EvalSetup.of_run(config, trainer.method, trainer.device, final=False)
    validation = Validation(periodic.rows(data.validation), periodic, validation_name(config))
    start_step = (checkpoint.step if checkpoint is not None else 0) + 1
    trackers = held.enter_context(
        tracking.tracked_run(
            config.report_to,
            output,
            config.to_dict(),
            resume=checkpoint is not None,
            start_step=start_step,
            main=is_main_process(),
        )
    )
    if checkpoint is not None:
        run = _resume(trainer, checkpoint)
        run.on_record, run.on_validation = trackers.log_history, on_validation
    else:
        run = RunProgress(on_record=trackers.log_history, on_validation=on_validation)
        if config.validate_at_start:
            _validate(trainer, validation, 0, run)
    _run_steps(trainer, config, output, fingerprint, run, start_step, validation, show_progress)
    release_freed_memory()  # the training steps' freed activations: evaluation and saving need far less

    if run.best_state is not None:
        load_trainable_state(trainer.unwrapped, run.best_state)
        best = f"step {run.best_step} ({run.best_accuracy * 100:.1f}% on validation)"
        say(f"keeping the best checkpoint: {best}")
    trainer.unwrapped.eval()
    final = _final_evaluation(
        trainer, config, data.validation, validation.name, show_progress, validation.rows, run.best_scored
    )
    metrics = _results(config, trainer, data, run, final)
    if is_main_process():
        best_step = run.best_step if run.best_step is not None else run.last_step
        metrics = save_results(output, config, trainer, best_step, metrics)
        remove_tree(checkpoint_root(output))  # finished: checkpoints are only for resuming
        trackers.finish(metrics, [output / ADAPTER_DIR, output / METRICS])
    metrics = from_main(metrics)  # also: every process returns once the run directory is complete
    model = trainer.unwrapped if keep_model else None
    return TrainResult(output=output, metrics=metrics, history=run.history, model=model)


def _final_evaluation(
    trainer: Trainer,
    config: TrainConfig,
    examples: list[MCQExample],
    name: str,
    show_progress: bool,
    validated_rows: list[MCQExample],
    kept_scores: ScoredExamples | None,
) -> dict[str, Any] | None:
    """The kept model's metrics on the first ``final_eval_limit`` validation rows, with each question's
    correctness (None without validation data). ``kept_scores``: the kept state's scores on the rows
    periodic validation scored (None after a resume); when those are the final rows (a search trial's dev
    split, a small set) they are the final scores, bit for bit: the setups differ only in their row limit."""
    if not examples:
        return None
    setup = EvalSetup.of_run(config, trainer.method, trainer.device)
    rows = setup.rows(examples)
    if kept_scores is not None and validated_rows == rows:
        scored = kept_scores
    else:
        with task(f"final validation ({name})" if show_progress and is_main_process() else None):
            scored = _score(trainer, rows, setup)
    final = _evaluate(scored, keep_answers=True)
    scoring = trainer.objective.scoring
    trainer.accelerator.print(
        format_metrics(final, f"validation ({name}, {trainer.method.name}, {scoring} scoring):")
    )
    return final


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
    validation: Validation,
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
    with StopRequest() as stop, closing(progress):
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
                _validate(trainer, validation, step, run)
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
    share = run.real_token_share
    metrics: dict[str, Any] = {
        "method": trainer.method.name,
        "objective": trainer.objective_name,
        "parameters": trainer.parameters.to_dict(),
        "train": {
            "steps": run.last_step,  # below planned_steps when a time budget stopped the run
            # the step whose state is the artifact: the best validated one (the last without validation)
            "best_step": run.best_step if run.best_step is not None else run.last_step,
            "planned_steps": trainer.total_steps,
            "processes": trainer.processes,
            "global_batch_size": trainer.global_batch_size,
            "examples_seen": run.last_step * trainer.global_batch_size,
            "seconds": round(run.train_seconds, 2),
            "real_tokens": run.real_tokens,
            "computed_tokens": run.computed_tokens,
            "real_token_share": None if share is None else round(share, 4),
            "tokens_per_second": round(run.tokens_per_second, 1),
            "precision": trainer.precision,
            "final_loss": round(run.losses[-1], 5),
            "mean_loss_last_10": round(float(np.mean(run.losses[-10:])), 5),
        },
        "data": {"train": config.train, "validation": config.validation},
        "sources": data.sources,
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
