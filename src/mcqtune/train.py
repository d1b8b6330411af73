"""The ``train`` stage: one training loop for every method and both objectives.

The loop only sees a model whose trainable parameters were chosen by a method plug-in, and a loss
function chosen by the objective:

- ``letter``: LM cross-entropy on the answer letter token(s) after the seed prompt;
- ``ranking``: cross-entropy over the options' length-normalised log-likelihoods (cloze).

It is built on ``accelerate.Accelerator`` (one process by default) so GPUs and multiple processes need
no rewrite. Periodic validation keeps the best trainable state, which is what gets saved.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from mcqtune.artifacts import base_identity, save_artifact
from mcqtune.atomic import atomic_write_json, atomic_write_yaml
from mcqtune.config import OBJECTIVE_TO_SCORING, TrainConfig, resolve_objective
from mcqtune.data import MCQExample, load_examples, resolve_data
from mcqtune.evaluate import compute_metrics, format_metrics, resolve_precision, score_examples
from mcqtune.methods import get_method, parameter_report
from mcqtune.methods.base import load_trainable_state, trainable_state
from mcqtune.models import load_tokenizer, resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import cloze_forward, collate_cloze, collate_letter, letter_forward, ranking_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None


def load_split(spec: str | None, split: str, config: TrainConfig, limit: int | None) -> list[MCQExample]:
    if spec is None:
        return []
    path = resolve_data(spec, split)
    result = load_examples(path, config.format, on_bad_rows=config.on_bad_rows, limit=limit)
    if result.skipped:
        log.warning("%s: skipped %d bad rows (--on-bad-rows skip)", path, result.skipped)
    if not result.examples:
        raise ValueError(f"{path}: no usable rows")
    return result.examples


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


def train(config: TrainConfig, *, show_progress: bool = True, keep_model: bool = False) -> TrainResult:
    """Train one method as configured, save its artifact and validation metrics into ``config.output``."""
    if not config.output:
        raise ValueError("an output directory is required (--output DIR)")
    output = Path(config.output)
    set_seed(config.seed)
    method = get_method(config.method)
    resolved = resolve_model(config.model)
    tokenizer = load_tokenizer(resolved)
    encoder = PromptEncoder(tokenizer, config.prompt_config())

    train_examples = load_split(config.train, "train", config, config.train_limit)
    val_examples = load_split(config.validation, "validation", config, None)

    cpu = not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda")
    precision = resolve_precision(config.precision, device)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=config.grad_accum,
    )
    device = accelerator.device

    base = method.load_base(resolved, config.method_options, device)
    identity = base_identity(resolved, base)
    objective_name = resolve_objective(config.objective, base.num_parameters())
    model = method.apply(base, config.method_options)
    packed = config.packing and method.supports_packing
    objective = Objective(objective_name, encoder, packed)
    params = parameter_report(model)
    accelerator.print(f"method {method.name}: {params.describe()}")
    accelerator.print(f"objective {objective_name} (scoring {objective.scoring}), precision {precision}")

    features = objective.encode(train_examples)
    stream = BatchStream(features, objective.length, config.batch_size, config.seed)
    if config.max_steps is not None:
        total_steps = config.max_steps
    else:
        total_steps = max(1, math.ceil(config.epochs * stream.batches_per_epoch / config.grad_accum))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"method '{method.name}' left no trainable parameters")
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

    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def validate(step: int) -> None:
        nonlocal best
        if not eval_rows:
            return
        m = _evaluate(unwrapped, encoder, eval_rows, objective.scoring, config, precision, device, packed)
        history.append({"step": step, "val_accuracy": m["accuracy"], "val_n": m["n"]})
        accelerator.print(f"step {step}: validation accuracy {m['accuracy'] * 100:.1f}% on {m['n']} rows")
        if step > 0 and (best is None or m["accuracy"] > best[0]):
            best = (m["accuracy"], step, trainable_state(unwrapped))

    validate(0)
    model.train()
    progress = tqdm(total=total_steps, disable=not show_progress, desc=f"train {method.name}", unit="step")
    real_tokens = 0
    train_seconds = 0.0
    losses: list[float] = []
    for step in range(1, total_steps + 1):
        step_start = time.perf_counter()
        step_loss = 0.0
        for _ in range(config.grad_accum):
            batch = objective.collate(next(stream)).to(device)
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
        history_entry = {"step": step, "loss": round(step_loss, 5), "lr": scheduler.get_last_lr()[0]}
        history.append(history_entry)
        progress.update(1)
        progress.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", tok_s=f"{real_tokens / train_seconds:.0f}")
        if step % config.eval_steps == 0 or step == total_steps:
            model.eval()
            validate(step)
            model.train()
    progress.close()

    if best is not None:
        load_trainable_state(unwrapped, best[2])
        accelerator.print(f"keeping the best checkpoint: step {best[1]} ({best[0] * 100:.1f}% on validation)")
    unwrapped.eval()

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
    output.mkdir(parents=True, exist_ok=True)
    artifact_bytes = save_artifact(unwrapped, output, manifest)
    accelerator.print(f"saved {method.name} artifact to {output} ({artifact_bytes / 2**20:.2f} MiB)")
    resolved_config = config.to_dict() | {"objective": objective_name}
    atomic_write_yaml(output / "config.yaml", resolved_config)

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
    if val_examples:
        final_rows = val_examples[: config.final_eval_limit] if config.final_eval_limit else val_examples
        final = _evaluate(
            unwrapped, encoder, final_rows, objective.scoring, config, precision, device, packed
        )
        zero_shot = next((h["val_accuracy"] for h in history if h["step"] == 0 and "val_accuracy" in h), None)
        metrics["validation"] = final
        metrics["zero_shot_val_accuracy_subset"] = zero_shot
        accelerator.print(format_metrics(final, f"validation ({method.name}, {objective.scoring} scoring):"))
    atomic_write_json(output / "metrics.json", metrics)
    return TrainResult(
        output=output, metrics=metrics, history=history, model=unwrapped if keep_model else None
    )
