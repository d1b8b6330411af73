"""The trainer: builds a method's trainable model and runs optimizer steps on it.

``train()`` (``recipe.py``) and the benchmark (``bench/``) both use this class, so what is measured is
what users run. Building is ``method.load_base -> prepare_base -> apply -> optimizer -> scheduler``
and ``accelerate.Accelerator.prepare`` (DDP under a multi-process launch: docs/SCALING.md);
:meth:`Trainer.step` is one optimizer step: ``grad_accum`` micro-batches of this process's shard of each
global batch, gradient clipping, optimizer and scheduler. :meth:`Trainer.state_for_checkpoint` and
:meth:`Trainer.restore` are what the checkpoint code saves and loads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from transformers import get_scheduler

from mcqtune.artifacts import base_identity
from mcqtune.config import ConfigError, TrainConfig, resolve_objective
from mcqtune.data import DataError, MCQExample
from mcqtune.methods import get_method, parameter_report
from mcqtune.methods.base import Method, check_master_weights, load_trainable_state, option_errors
from mcqtune.models import ModelError, ResolvedModel, resolve_precision
from mcqtune.preflight import check_training_fits, check_weights_fit, model_dir_summary
from mcqtune.prompt import PromptEncoder
from mcqtune.training.checkpoint import Checkpoint, tensor_bytes
from mcqtune.training.memory import RELEASE_EVERY_STEPS, release_freed_memory
from mcqtune.training.objectives import make_objective
from mcqtune.training.stream import BatchStream, Shard


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: its mean micro-batch loss and the work it did.

    ``real_tokens`` are the non-pad positions the model ran (a prefix shared by a batch's rows counts
    once), ``computed_tokens`` every position it ran, padding included: their ratio is how much of the
    compute was useful.
    """

    loss: float
    real_tokens: int
    questions: int
    seconds: float
    computed_tokens: int


def draws_dropout(model: torch.nn.Module) -> bool:
    """Whether a training forward pass of ``model`` draws random dropout masks."""
    if getattr(getattr(model, "config", None), "attention_dropout", 0.0):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def fresh_accelerator(cpu: bool, precision: str) -> Accelerator:
    """An ``Accelerator`` that inherits nothing from an earlier one in this process.

    accelerate keeps process-wide singletons; a second trainer in one process (tests, the demo, the
    benchmark beside transformers' Trainer) must not inherit the first one's settings. accelerate has
    no public way to drop them, so this is the one place that calls its private ``_reset_state``.
    Mixed precision is accelerate's (bf16 autocast around the forward, outputs returned in fp32: the
    gradients differ from a bare ``torch.autocast`` in the last bits, and this is what every release
    trained with). Gradient accumulation is :meth:`Trainer.step`'s, so no step depends on accelerate's
    process-wide accumulation counter.

    The scheduler steps once per optimizer step whatever the number of processes: by default accelerate's
    prepared scheduler steps ``num_processes`` times per call, assuming the schedule was planned for one
    process's share of the data; mcqtune plans ``total_steps`` in global batches, so that would run the
    schedule N times too fast (``step_scheduler_with_optimizer=False`` makes it one ``scheduler.step()``).
    """
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if precision == "bf16" else "no",
        step_scheduler_with_optimizer=False,
    )


def run_precision(config: TrainConfig) -> str:
    """The precision this process trains in, and ``config.method_options`` fixed to follow it.

    Options such as QLoRA's ``compute_dtype: auto`` become concrete here, before the run directory is
    checked, so a resumed run compares what it will use with what its checkpoint recorded.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(config.precision, device)
    config.method_options = get_method(config.method).run_options(config.method_options, precision)
    return precision


def enable_gradient_checkpointing(model: torch.nn.Module, method: Method, model_name: str) -> None:
    """transformers' gradient checkpointing on the (possibly peft-wrapped) model: each decoder layer keeps
    only its input and recomputes its activations in the backward pass. Non-reentrant, so no input needs
    ``requires_grad`` for a frozen base to pass gradients back to the layers' adapters."""
    if not method.supports_gradient_checkpointing:
        raise ConfigError(f"--gradient-checkpointing: method '{method.name}' does not support it")
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: model '{model_name}' does not support it")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def planned_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * batches_per_epoch / config.grad_accum))


class Trainer:
    """One method's model, objective, data stream, optimizer and scheduler, and the step that uses them.

    ``prepare_base`` and ``model_hook`` let the benchmark's lever A/Bs change the base preparation or
    the model; ``train()`` passes neither. Raises a :class:`~mcqtune.errors.UserError` naming the cause
    when the weights or the training state cannot fit, no row fits ``max_length`` (``data_file`` is
    named), or the method leaves nothing to train.
    """

    def __init__(
        self,
        config: TrainConfig,
        resolved: ResolvedModel,
        encoder: PromptEncoder,
        examples: list[MCQExample],
        *,
        data_file: Path | str | None = None,
        prepare_base: Callable[[torch.nn.Module], torch.nn.Module | None] | None = None,
        model_hook: Callable[[torch.nn.Module], None] | None = None,
    ):
        self.config = config
        self.examples = examples
        cpu = not torch.cuda.is_available()
        self.precision = run_precision(config)  # also fixes the options that follow the precision
        self.accelerator = fresh_accelerator(cpu, self.precision)
        self.device = self.accelerator.device
        self.method = get_method(config.method)
        summary = model_dir_summary(resolved.path, ModelError)  # also catches truncated weight files
        if summary and type(self.method).load_base is Method.load_base:  # the default loads fp32 weights
            check_weights_fit(summary["n_params"], 4, self.device, f"model '{config.model}' (fp32 weights)")

        options = config.method_options  # the run's manifest records these, as used
        with option_errors(self.method.name, options):
            base = self.method.load_base(resolved, options, self.device)
            if prepare_base is None:  # bf16: frozen linear weights stored in bf16 (PERFORMANCE.md)
                self.method.prepare_base(base, self.precision)
            else:
                base = prepare_base(base) or base
            self.base_identity = base_identity(resolved, base)
            self.objective_name = resolve_objective(config.objective, base.num_parameters())
            model = self.method.apply(base, options)
            check_master_weights(model, self.method.name)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model, self.method, config.model)
        if model_hook is not None:
            model_hook(model)
        self.packed = self.method.packs(config.packing)
        # A shared prefix reaches the rows as a key/value cache, which checkpointed layers drop; and its one
        # pass would give every row the same dropout masks on those tokens.
        self.shares_prefix = self.packed and not config.gradient_checkpointing and not draws_dropout(model)
        self.objective = make_objective(self.objective_name, encoder, self.packed, self.shares_prefix)
        self.parameters = parameter_report(model)

        self.features = self.objective.encode(examples)
        if not self.features:
            raise DataError(
                f"no training row fits max_length={encoder.config.max_length} tokens; raise --max-length",
                file=str(data_file) if data_file is not None else None,
            )
        self.processes = self.accelerator.num_processes
        self.stream = BatchStream(
            self.features,
            self.objective.length,
            config.batch_size,
            config.seed,
            rank=self.accelerator.process_index,
            processes=self.processes,
        )
        self.total_steps = planned_steps(config, self.stream.batches_per_epoch)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ConfigError(f"method '{self.method.name}' left no trainable parameters")
        self.trainable_bytes = tensor_bytes(self.trainable)
        model_config = (summary or {}).get("config", {})
        max_length = encoder.config.max_length
        check_training_fits(self.trainable_bytes, model_config, config.batch_size, max_length, self.device)
        with option_errors(self.method.name, options):
            optimizer = self.method.make_optimizer(self.trainable, config, self.device)
        scheduler = get_scheduler(
            config.scheduler,
            optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.named_trainable = {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        self.autocast = self.accelerator.autocast
        # Option order only matters to an order-sensitive objective (letter); cloze options never meet.
        self.shuffling = config.shuffle_options and self.objective.order_sensitive
        self.model.train()
        self.steps_taken = 0  # by this trainer, in this process (a resumed run counts from its resume)

    @property
    def global_batch_size(self) -> int:
        """Questions per optimizer step over all processes: per-device batch x processes x grad_accum."""
        return self.stream.global_batch_size * self.config.grad_accum

    def describe_batch(self) -> str:
        config = self.config
        return (
            f"global batch {self.global_batch_size} = {config.batch_size} per device x {self.processes} "
            f"process(es) x {config.grad_accum} accumulation"
        )

    # ------------------------------------------------------------------------------------------ steps
    def next_shard(self) -> Shard:
        """This process's part of the stream's next global batch, options shuffled for this epoch when
        the objective trains on order."""
        shard = next(self.stream)
        if not self.shuffling:
            return shard
        features = self.objective.shuffled(self.examples, shard.features, self.config.seed, self.stream.epoch)
        return Shard(features, shard.weight, shard.global_size)

    def next_features(self) -> list[Any]:
        return self.next_shard().features

    def step(self, features: list[Any] | None = None) -> StepResult:
        """One optimizer step over ``grad_accum`` micro-batches (the stream's, or ``features`` each time).

        The loss of each micro-batch is divided by ``grad_accum`` before backward, so the gradient is
        the mean over the step's micro-batches; the returned loss is that mean too. With several
        processes each loss is also scaled by the process's share of the global batch (``Shard.weight``,
        1.0 with one process), so DDP's mean over processes is the mean over the global batch, and the
        returned loss, tokens and questions are summed over processes (one all-reduce per step).
        """
        start = time.perf_counter()
        accumulate = self.config.grad_accum
        loss_sum = 0.0
        real_tokens = computed_tokens = questions = 0
        for micro in range(accumulate):
            shard = self.next_shard() if features is None else Shard(features, 1.0, len(features))
            batch = self.objective.collate(shard.features).to(self.device)
            last = micro == accumulate - 1
            # DDP: gradients are all-reduced once, on the step's last micro-batch
            with nullcontext() if last else self.accelerator.no_sync(self.model), self.autocast():
                loss = self.objective.loss(self.model, batch)
                share = loss if shard.weight == 1.0 else loss * shard.weight
                self.accelerator.backward(share / accumulate)
            loss_sum += loss.item() * shard.weight / accumulate
            if shard.weight:  # a stand-in question (weight 0) is not work done
                real_tokens += batch.real_tokens
                computed_tokens += batch.computed_tokens
                questions += len(shard.features)
        if self.processes > 1:
            totals = torch.tensor(
                [loss_sum, real_tokens, computed_tokens, questions], dtype=torch.float64, device=self.device
            )
            loss_total, real_total, computed_total, questions_total = self.accelerator.reduce(
                totals, "sum"
            ).tolist()
            loss_sum = loss_total / self.processes
            real_tokens, computed_tokens = int(real_total), int(computed_total)
            questions = int(questions_total)
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1
        if self.steps_taken % RELEASE_EVERY_STEPS == 0:  # not every step: the next one re-faults the pages
            release_freed_memory()
        return StepResult(loss_sum, real_tokens, questions, time.perf_counter() - start, computed_tokens)

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------------------------- checkpoints
    def state_for_checkpoint(self) -> dict[str, Any]:
        """The keyword arguments of ``save_checkpoint`` that this trainer owns."""
        return {"trainable": self.named_trainable, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def stream_state(self) -> dict[str, int]:
        return self.stream.state()

    def restore(self, checkpoint: Checkpoint, stream_state: dict[str, int]) -> None:
        """Continue from ``checkpoint``: trainable weights, optimizer, scheduler and data position."""
        load_trainable_state(self.unwrapped, checkpoint.trainable(self.device))
        self.optimizer.load_state_dict(checkpoint.torch_state("optimizer.pt", self.device))
        self.scheduler.load_state_dict(checkpoint.torch_state("scheduler.pt"))
        self.stream.restore(stream_state)
