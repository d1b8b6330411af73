"""The ``train`` stage: one training loop for every method and both objectives.

The loop only sees a model whose trainable parameters were chosen by a method plug-in, and a loss
function chosen by the objective:

- ``letter``: LM cross-entropy on the answer letter token(s) after the seed prompt;
- ``ranking``: cross-entropy over the options' length-normalised log-likelihoods (cloze).

It is built on ``accelerate.Accelerator`` (one process by default) so GPUs and multiple processes need
no rewrite. Periodic validation keeps the best trainable state, which is what gets saved.

Reliability (docs/RELIABILITY.md): everything is validated before the run directory is touched; a
checkpoint (``checkpoint.py``) is written every ``save_steps`` steps and on Ctrl-C/SIGTERM, and
re-running the same command continues from the newest complete one with the same result as an
uninterrupted run; the artifact is written atomically, ``metrics.json`` last.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from mcqtune.artifacts import ADAPTER_DIR, LOCK_FILE, MANIFEST, base_identity, save_artifact
from mcqtune.atomic import atomic_write_json, atomic_write_yaml, remove_stale_temporaries, remove_tree
from mcqtune.config import OBJECTIVE_TO_SCORING, ConfigError, TrainConfig, resolve_objective
from mcqtune.data import DataError, MCQExample, load_examples, resolve_data
from mcqtune.errors import UserError
from mcqtune.evaluation.analysis import shuffled_features
from mcqtune.evaluation.evaluate import compute_metrics, format_metrics, resolve_precision, score_examples
from mcqtune.methods import get_method, parameter_report
from mcqtune.methods.base import Method, check_master_weights, load_trainable_state, trainable_state
from mcqtune.models import ModelError, load_policy, load_tokenizer, resolve_model
from mcqtune.preflight import (
    MIB,
    DiskSpaceError,
    check_output_dir,
    check_training_fits,
    check_weights_fit,
    ensure_free_space,
    mib,
    model_dir_summary,
)
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import cloze_forward, collate_cloze, collate_letter, letter_forward, ranking_loss
from mcqtune.training.checkpoint import (
    CHECKPOINTS_DIR,
    Checkpoint,
    CheckpointError,
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
    tensor_bytes,
)

try:
    import fcntl
except ImportError:  # not POSIX: no run-directory lock
    fcntl = None

log = logging.getLogger(__name__)

METRICS = "metrics.json"
CONFIG_FILE = "config.yaml"

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
    result = load_examples(path, config.format, on_bad_rows=config.on_bad_rows, limit=limit)
    if result.skipped:
        log.warning("%s: skipped %d bad rows (--on-bad-rows skip)", path, result.skipped)
    if not result.examples:
        raise DataError("no usable rows", file=str(path))
    return result.examples, result.skipped


class BatchStream:
    """Endless stream of length-grouped batches, reshuffled each epoch with a seeded generator.

    Grouping by length (sort inside shuffled pools of 50 batches) cuts padding without making batches
    predictable; ``position`` (epoch, batch) is what a resume needs.
    """

    def __init__(self, features: list[Any], length: Callable[[Any], int], batch_size: int, seed: int):
        self.features = features
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[Any]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.features)))
        rng.shuffle(order)
        pool = self.batch_size * 50
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.length(self.features[i]))
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return [[self.features[i] for i in b] for b in batches]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def restore(self, state: dict[str, int]) -> None:
        """Continue exactly where ``state()`` was taken: same epoch plan, same next batch."""
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._batches = self._plan(self.epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        return self

    def __next__(self) -> list[Any]:
        if self.cursor >= len(self._batches):
            self.epoch += 1
            self.cursor = 0
            self._batches = self._plan(self.epoch)
        batch = self._batches[self.cursor]
        self.cursor += 1
        return batch


class Objective:
    """Turns features into batches and batches into a loss; the only objective-specific code."""

    def __init__(self, name: str, encoder: PromptEncoder, packed: bool):
        self.name = name
        self.encoder = encoder
        self.packed = packed
        self.scoring = OBJECTIVE_TO_SCORING[name]
        self.pad_id = encoder.tokenizer.pad_token_id

    def encode(self, examples: list[MCQExample]) -> list[Any]:
        encoded = (
            self.encoder.encode_letter(examples, with_answer=True)
            if self.name == "letter"
            else self.encoder.encode_cloze(examples)
        )
        if encoded.skipped:
            log.warning("skipped %d training rows that do not fit max_length", len(encoded.skipped))
        return encoded.features

    def length(self, feature: Any) -> int:
        return len(feature.input_ids) if self.name == "letter" else feature.length

    def collate(self, features: list[Any]):
        if self.name == "letter":
            return collate_letter(features, self.pad_id, full_logits=self.encoder.config.train_on_prompt)
        return collate_cloze(features, self.pad_id, packed=self.packed)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        if self.name == "letter":
            loss, _ = letter_forward(model, batch, with_loss=True)
            return loss
        return ranking_loss(cloze_forward(model, batch), batch.answers)


def _evaluate(model, encoder, examples, scoring, config, precision, device, packed) -> dict[str, Any]:
    scored = score_examples(
        model,
        encoder,
        examples,
        scoring,
        batch_size=config.eval_batch_size,
        packed=packed,
        precision=precision,
        device=device,
    )
    return compute_metrics(scored)


@contextmanager
def _method_errors(method_name: str, options: dict[str, Any]) -> Iterator[None]:
    """Method plug-ins report bad options with ValueError; to the user that is a config error."""
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise ConfigError(f"method '{method_name}' (options {options}): {exc}") from exc


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
    """One training process per run directory: a second one (the same command started again while the
    first still runs) would interleave checkpoints with it."""
    output.mkdir(parents=True, exist_ok=True)
    handle = (output / LOCK_FILE).open("a")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(
                    f"{output} is being written by another mcqtune train process; "
                    "wait for it to finish or stop it (Ctrl-C saves a checkpoint) before running again"
                ) from None
        yield
    finally:
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
    method = get_method(config.method)
    resolved = resolve_model(config.model)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    encoder = PromptEncoder(tokenizer, config.prompt_config())

    train_path = resolve_data(config.train, "train")
    val_path = resolve_data(config.validation, "validation") if config.validation else None
    train_examples, train_skipped = load_split(train_path, config, config.train_limit)
    val_examples, val_skipped = load_split(val_path, config, None)

    cpu = not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda")
    precision = resolve_precision(config.precision, device)
    # accelerate keeps process-wide singletons: a second train() in one process (tests, the demo) with
    # another precision or grad_accum must not inherit the first one's state.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=config.grad_accum,
    )
    device = accelerator.device

    summary = model_dir_summary(resolved.path, ModelError)  # also catches truncated weight files
    if summary and type(method).load_base is Method.load_base:  # the default loads fp32 weights
        check_weights_fit(summary["n_params"], 4, device, f"model '{config.model}' (fp32 weights)")
    with _method_errors(method.name, config.method_options):
        base = method.load_base(resolved, config.method_options, device)
        method.prepare_base(base, precision)  # bf16: frozen linear weights stored in bf16 (PERFORMANCE.md)
        identity = base_identity(resolved, base)
        objective_name = resolve_objective(config.objective, base.num_parameters())
        model = method.apply(base, config.method_options)
        check_master_weights(model, method.name)
    packed = config.packing and method.supports_packing
    objective = Objective(objective_name, encoder, packed)
    params = parameter_report(model)

    features = objective.encode(train_examples)
    if not features:
        raise DataError(
            f"no training row fits max_length={encoder.config.max_length} tokens; raise --max-length",
            file=str(train_path),
        )
    stream = BatchStream(features, objective.length, config.batch_size, config.seed)
    if config.max_steps is not None:
        total_steps = config.max_steps
    else:
        total_steps = max(1, math.ceil(config.epochs * stream.batches_per_epoch / config.grad_accum))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"method '{method.name}' left no trainable parameters")
    trainable_bytes = tensor_bytes(trainable)
    check_training_fits(
        trainable_bytes,
        (summary or {}).get("config", {}),
        config.batch_size,
        encoder.config.max_length,
        device,
    )
    with _method_errors(method.name, config.method_options):
        optimizer = method.make_optimizer(trainable, config, device)
    scheduler = get_scheduler(
        config.scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    eval_rows = val_examples[: config.eval_limit] if config.eval_limit else val_examples
    unwrapped = accelerator.unwrap_model(model)
    named_trainable = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
    fingerprint = {
        "train_sha256": file_fingerprint(train_path)["sha256"],
        "validation_sha256": (file_fingerprint(val_path) or {}).get("sha256"),
        "base_config_hash": identity["base_config_hash"],
        "trainable": {n: list(p.shape) for n, p in named_trainable.items()},
    }
    if checkpoint is not None:
        _check_fingerprint(checkpoint, fingerprint)

    # Disk: while rotating, keep_checkpoints + 1 checkpoints exist at once, plus the final artifact.
    checkpoint_bytes = estimate_checkpoint_bytes(trainable)
    saves = math.ceil(total_steps / config.save_steps) if config.save_steps else 1
    at_once = 1 if checkpoint is not None else min(saves, config.keep_checkpoints + 1)
    ensure_free_space(
        output,
        at_once * checkpoint_bytes + trainable_bytes + MIB,
        f"this run ({at_once} checkpoint(s) of ~{mib(checkpoint_bytes)}, a ~{mib(trainable_bytes)} artifact)",
        "free some space, lower --keep-checkpoints, or choose another --output",
    )

    # Every check passed: from here on the run directory is written.
    held.enter_context(_run_lock(output))
    if overwrite:
        _clear_previous_run(output)
    clean_checkpoint_dir(output)
    remove_stale_temporaries(output)
    if checkpoint is not None:  # damaged checkpoints newer than the one resumed from are dead ends
        for path in list_checkpoints(output):
            if (step_of(path) or 0) > checkpoint.step:
                remove_tree(path)
    accelerator.print(f"method {method.name}: {params.describe()}")
    accelerator.print(f"objective {objective_name} (scoring {objective.scoring}), precision {precision}")

    history: list[dict[str, Any]] = []
    losses: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    real_tokens = 0
    train_seconds = 0.0

    def validate(step: int) -> None:
        nonlocal best
        if not eval_rows:
            return
        m = _evaluate(unwrapped, encoder, eval_rows, objective.scoring, config, precision, device, packed)
        history.append({"step": step, "val_accuracy": m["accuracy"], "val_n": m["n"]})
        accelerator.print(f"step {step}: validation accuracy {m['accuracy'] * 100:.1f}% on {m['n']} rows")
        if step > 0 and (best is None or m["accuracy"] > best[0]):
            best = (m["accuracy"], step, trainable_state(unwrapped))

    def save(step: int) -> Path:
        state = {
            "total_steps": total_steps,
            "stream": stream.state(),
            "history": history,
            "losses": losses,
            "real_tokens": real_tokens,
            "train_seconds": train_seconds,
            "best_accuracy": best[0] if best else None,
            "best_step": best[1] if best else None,
        }
        return save_checkpoint(
            output,
            step=step,
            trainable=named_trainable,
            best=best[2] if best else None,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            config=config.to_dict(),
            fingerprint=fingerprint,
            keep=config.keep_checkpoints,
        )

    start_step = 1
    if checkpoint is not None:
        state = checkpoint.state
        load_trainable_state(unwrapped, checkpoint.trainable(device))
        optimizer.load_state_dict(checkpoint.torch_state("optimizer.pt", device))
        scheduler.load_state_dict(checkpoint.torch_state("scheduler.pt"))
        stream.restore(state["stream"])
        history.extend(state["history"])
        losses.extend(state["losses"])
        real_tokens = state["real_tokens"]
        train_seconds = state["train_seconds"]
        best_tensors = checkpoint.best(device)
        if best_tensors is not None:
            best = (state["best_accuracy"], state["best_step"], best_tensors)
        accelerator.step = checkpoint.step * config.grad_accum  # gradient-accumulation phase
        restore_rng(checkpoint.meta["rng"], checkpoint.rng_tensors())  # last: nothing may draw after it
        start_step = checkpoint.step + 1
        accelerator.print(f"resuming from {checkpoint.path} (step {checkpoint.step} of {total_steps})")
    else:
        validate(0)

    model.train()
    progress = tqdm(
        total=total_steps,
        initial=start_step - 1,
        disable=not show_progress,
        desc=f"train {method.name}",
        unit="step",
    )
    # Option order only matters to letter scoring; cloze options never see each other.
    shuffling = config.shuffle_options and objective.scoring == "letter"
    with _StopRequest() as stop:
        for step in range(start_step, total_steps + 1):
            step_start = time.perf_counter()
            step_loss = 0.0
            for _ in range(config.grad_accum):
                batch_features = next(stream)
                if shuffling:  # a fresh option order per example and epoch, answer remapped
                    batch_features = shuffled_features(
                        objective, train_examples, batch_features, config.seed, stream.epoch
                    )
                batch = objective.collate(batch_features).to(device)
                with accelerator.accumulate(model), accelerator.autocast():
                    loss = objective.loss(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.item() / config.grad_accum
                real_tokens += batch.real_tokens
            train_seconds += time.perf_counter() - step_start
            losses.append(step_loss)
            history.append({"step": step, "loss": round(step_loss, 5), "lr": scheduler.get_last_lr()[0]})
            progress.update(1)
            progress.set_postfix(
                loss=f"{np.mean(losses[-10:]):.3f}", tok_s=f"{real_tokens / max(train_seconds, 1e-9):.0f}"
            )
            if step % config.eval_steps == 0 or step == total_steps:
                model.eval()
                validate(step)
                model.train()
            due = config.save_steps is not None and (step % config.save_steps == 0 or step == total_steps)
            stopping = stop.signal  # read once: a signal may arrive while the checkpoint is written
            if due or stopping:
                saved = save(step)
            if stopping:
                progress.close()
                raise TrainingInterrupted(stopping, step, total_steps, saved)
    progress.close()

    if best is not None:
        load_trainable_state(unwrapped, best[2])
        accelerator.print(f"keeping the best checkpoint: step {best[1]} ({best[0] * 100:.1f}% on validation)")
    unwrapped.eval()

    final = None
    if val_examples:
        final_rows = val_examples[: config.final_eval_limit] if config.final_eval_limit else val_examples
        final = _evaluate(
            unwrapped, encoder, final_rows, objective.scoring, config, precision, device, packed
        )
        accelerator.print(format_metrics(final, f"validation ({method.name}, {objective.scoring} scoring):"))

    manifest = {
        "method": method.name,
        "method_options": config.method_options,
        "objective": objective_name,
        "scoring": objective.scoring,
        **identity,
        "prompt": encoder.config.to_dict(),
        "packing": packed,
        "parameters": params.to_dict(),
        "best_step": best[1] if best else total_steps,
    }
    # The artifact first, metrics.json last: metrics.json is what marks the run finished.
    try:
        ensure_free_space(output, trainable_bytes + MIB, "the artifact", _RESUME_HINT)
        artifact_bytes = save_artifact(unwrapped, output, manifest)
        accelerator.print(f"saved {method.name} artifact to {output} ({artifact_bytes / 2**20:.2f} MiB)")
        resolved_config = config.to_dict() | {"objective": objective_name}
        atomic_write_yaml(output / CONFIG_FILE, resolved_config)

        metrics: dict[str, Any] = {
            "method": method.name,
            "objective": objective_name,
            "parameters": params.to_dict(),
            "artifact_bytes": artifact_bytes,
            "train": {
                "steps": total_steps,
                "examples_seen": total_steps * config.batch_size * config.grad_accum,
                "seconds": round(train_seconds, 2),
                "real_tokens": real_tokens,
                "tokens_per_second": round(real_tokens / max(train_seconds, 1e-9), 1),
                "final_loss": round(float(np.mean(losses[-10:])), 5),
            },
            "history": history,
        }
        if train_skipped or val_skipped:
            metrics["bad_rows_skipped"] = {"train": train_skipped, "validation": val_skipped}
        if final is not None:
            zero_shot = next(
                (h["val_accuracy"] for h in history if h["step"] == 0 and "val_accuracy" in h), None
            )
            metrics["validation"] = final
            metrics["zero_shot_val_accuracy_subset"] = zero_shot
        atomic_write_json(output / METRICS, metrics)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(f"disk full while saving the artifact in {output}; {_RESUME_HINT}") from exc
        raise
    remove_tree(checkpoint_root(output))  # finished: checkpoints are only for resuming
    return TrainResult(
        output=output, metrics=metrics, history=history, model=unwrapped if keep_model else None
    )
