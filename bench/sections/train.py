"""``train``: mcqtune's LoRA step (letter objective) vs the naive HF ``Trainer`` recipe (bench/naive.py),
interleaved step by step: real (non-pad) tokens/s, then letter-scored validation accuracy of both after
the same examples.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.context import Context
from bench.spawn import log


def section_train(ctx: Context) -> dict[str, Any]:
    """Item 1: interleaved steps of mcqtune's LoRA step and the naive Trainer, then accuracy of both."""
    from bench.helpers import McqtuneStepper, Timings, non_embedding_params
    from bench.naive import (
        NAIVE_MAX_LENGTH,
        CountingCollator,
        naive_dataset,
        naive_lora_model,
        naive_texts,
        naive_trainer,
    )
    from bench.notebook_tokenizer import notebook_tokenizer
    from transformers import TrainerCallback

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.evaluation.metrics import compute_metrics

    s = ctx.settings
    n_examples = s.train_steps * s.batch_size
    train_rows = ctx.rows("medmcqa", "train", n_examples)
    val_rows = ctx.rows("medmcqa", "validation", s.val_rows)
    config = ctx.lora_config("letter", s.train_steps)
    stepper = McqtuneStepper(config, ctx.resolved, ctx.encoder, train_rows)

    tokenizer = notebook_tokenizer(ctx.resolved.path)
    dataset = naive_dataset(tokenizer, naive_texts(train_rows))
    naive_model = naive_lora_model(ctx.resolved.path, config.method_options)
    collator = CountingCollator(tokenizer)
    naive_timings = Timings()

    class Interleave(TrainerCallback):
        """Runs one mcqtune step per naive step, before it on odd steps and after it on even ones;
        the naive step's time is the wall time the Trainer held, minus our steps."""

        def __init__(self) -> None:
            self.resume = time.perf_counter()
            self.naive_seconds = 0.0

        def _pause(self) -> None:
            self.naive_seconds += time.perf_counter() - self.resume

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self.resume = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self._pause()
            if state.global_step % 2 == 1:
                stepper.step()
            self.resume = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._pause()
            step = len(naive_timings.seconds)
            naive_timings.add(self.naive_seconds, collator.real_tokens[step], collator.questions[step])
            self.naive_seconds = 0.0
            if state.global_step % 2 == 1:  # global_step was incremented: this was an even step
                stepper.step()
            if time.perf_counter() - self.start > s.train_budget_seconds:
                control.should_training_stop = True  # both recipes stop at the same number of examples
            self.resume = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-") as tmp:
        trainer = naive_trainer(
            naive_model,
            tokenizer,
            dataset,
            tmp,
            batch_size=s.batch_size,
            max_steps=s.train_steps,
            lr=config.lr,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay or 0.0,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            callbacks=[Interleave()],
            collator=collator,
        )
        log(f"train: {s.train_steps} interleaved steps of each recipe, batch {s.batch_size}")
        trainer.train()

    def evaluate(model) -> dict[str, Any]:
        scored = score_examples(
            model, ctx.encoder, val_rows, "letter", batch_size=16, precision=stepper.precision
        )
        m = compute_metrics(scored)
        return {k: m[k] for k in ("accuracy", "ci95", "n", "predicted_letter_distribution")} | {
            "majority_baseline": m["majority_baseline"]
        }

    log(f"train: letter-scored validation accuracy on {len(val_rows)} rows")
    ours = evaluate(stepper.model)
    naive = evaluate(naive_model)
    with stepper.model.disable_adapter():
        zero_shot = evaluate(stepper.model)
    w = s.warmup_steps
    ours_tps = stepper.timings.tokens_per_second(w)
    naive_tps = naive_timings.tokens_per_second(w)
    steps_done = len(stepper.timings.seconds)
    assert steps_done == len(naive_timings.seconds), "the recipes must see the same examples"
    result = {
        "examples": sum(stepper.timings.questions),
        "batch_size": s.batch_size,
        "steps": steps_done,
        "steps_planned": s.train_steps,
        "naive_max_length": NAIVE_MAX_LENGTH,
        "precision": stepper.precision,
        "mcqtune": stepper.timings.to_dict(w) | {"losses": [round(x, 4) for x in stepper.losses]},
        "naive": naive_timings.to_dict(w) | {"padded_tokens_per_step": s.batch_size * NAIVE_MAX_LENGTH},
        "ratio_tokens_per_second": round(ours_tps / max(naive_tps, 1e-9), 2),
        "accuracy": {"mcqtune": ours, "naive": naive, "zero_shot": zero_shot},
        "accuracy_difference_points": round((ours["accuracy"] - naive["accuracy"]) * 100, 2),
        "non_embedding_params": non_embedding_params(stepper.model.get_base_model()),
        "mean_real_tokens_per_question": round(
            sum(stepper.timings.tokens) / max(sum(stepper.timings.questions), 1), 1
        ),
    }
    return result
