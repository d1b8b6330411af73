"""Lever A/Bs behind docs/PERFORMANCE.md's lever log: ``bench/run.py --levers`` (or ``--only levers``).

Each lever is measured in one process with its variants interleaved step by step (rotating order), on
mcqtune's LoRA letter step (MedMCQA, the bench's batch size) unless said otherwise:

- ``frozen_dtype``: fp32 compute; bf16 autocast over an fp32 base; bf16 autocast with the frozen linear
  weights stored in bf16 (mcqtune's default); the whole base loaded in bf16 (also embeddings/norms, so
  the residual stream is bf16: not bit-identical, the first-step loss difference is reported);
- ``threads``: torch.set_num_threads(1) vs all cores;
- ``logits``: logits only at the answer positions (``logits_to_keep``) vs at every position;
- ``grad_checkpointing``: step time with and without (its memory: ``--levers`` also runs two ``train()``
  processes, see ``memory``);
- ``adamw``: optimizer.step() alone over the LoRA parameters: for-loop vs foreach vs fused;
- ``length_grouping``: real/padded token share of BatchStream's length-grouped batches vs random
  batches vs padding to 512 (no model involved);
- ``tokenize_once``: seconds to encode the MedMCQA training split (what a per-step tokenizer would repeat);
- ``eval_mode``: letter scoring under ``torch.no_grad`` (mcqtune) vs ``torch.inference_mode``;
- ``attention``: training with the math SDPA kernel (mcqtune on CPU) vs torch's default (flash on CPU);
- ``lora_dropout``: lora.yaml's dropout vs 0 (peft's Bernoulli masks over every LoRA input);
- ``fused_lora``: at fp32, LoRA's update added inside its own matmul (mcqtune's ``FusedLoraLinear``) vs
  peft's forward (one trainer, its LoRA layers' class swapped before each step);
- ``compile`` (only with ``--compile-lever``: compiling takes many minutes on 2 cores): ``torch.compile``
  of the LoRA model (compile seconds, then step time on the same batches).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench.helpers import McqtuneStepper, Timings


def _rotate(names: list[str], i: int) -> list[str]:
    k = i % len(names)
    return names[k:] + names[:k]


def _interleave(steppers: dict[str, McqtuneStepper], steps: int, warmup: int, before=None) -> dict:
    """Same batch for every variant at each step, order rotated; median step seconds and ratios."""
    names = list(steppers)
    timings = {n: Timings() for n in names}
    reference = steppers[names[0]]
    for i in range(steps):
        features = reference.next_features()
        for name in _rotate(names, i):
            if before is not None:
                before(name)
            steppers[name].step(features, timings=timings[name])
    base = timings[names[0]].median_seconds(warmup)
    return {
        n: {
            "median_step_seconds": round(t.median_seconds(warmup), 4),
            "tokens_per_second": round(t.tokens_per_second(warmup), 1),
            "speedup_vs_first": round(base / t.median_seconds(warmup), 3),
        }
        for n, t in timings.items()
    }


def lever_frozen_dtype(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    def make(precision: str, prepare):
        config = ctx.lora_config("letter", steps)
        config.precision = precision
        stepper = McqtuneStepper(config, ctx.resolved, ctx.encoder, rows, prepare_base=prepare)
        return stepper

    variants = {
        "fp32 compute, fp32 base": make("fp32", None),
        "bf16 autocast, fp32 base": make("bf16", lambda base: base),
        "bf16 autocast, frozen linear weights bf16 (default)": make("bf16", None),
        "bf16 autocast, whole base bf16": make("bf16", lambda base: base.to(torch.bfloat16)),
    }
    result = _interleave(variants, steps, warmup)
    first_losses = {n: s.losses[0] for n, s in variants.items()}
    for name in result:
        result[name]["first_step_loss"] = round(first_losses[name], 6)
    return result


def lever_threads(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    import os

    cores = os.cpu_count() or 1
    configured = torch.get_num_threads()
    stepper = McqtuneStepper(ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows)
    # one stepper under two names: the thread count is set before each step
    result = _interleave(
        {f"{cores} threads": stepper, "1 thread": stepper},
        steps,
        warmup,
        before=lambda name: torch.set_num_threads(1 if name == "1 thread" else cores),
    )
    torch.set_num_threads(configured)
    return result


def lever_attention(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    """Training with the math SDPA kernel (mcqtune on CPU) vs torch's default choice (flash on CPU)."""
    from mcqtune.scoring import use_math_sdpa_for_cpu_training

    variants = {
        "math SDPA (mcqtune, CPU training)": McqtuneStepper(
            ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows
        ),
        "default SDPA (flash on CPU)": McqtuneStepper(
            ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows
        ),
    }
    try:
        return _interleave(
            variants, steps, warmup, before=lambda n: use_math_sdpa_for_cpu_training(n.startswith("math"))
        )
    finally:
        use_math_sdpa_for_cpu_training(True)


def lever_lora_dropout(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    """peft draws a Bernoulli mask over every LoRA layer's input when lora_dropout > 0."""

    def make(dropout: float) -> McqtuneStepper:
        config = ctx.lora_config("letter", steps)
        config.method_options = {**config.method_options, "dropout": dropout}
        return McqtuneStepper(config, ctx.resolved, ctx.encoder, rows)

    default = ctx.lora_config("letter", steps).method_options.get("dropout")
    variants = {f"dropout {default} (lora.yaml)": make(default), "dropout 0": make(0.0)}
    return _interleave(variants, steps, warmup)


def lever_fused_lora(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    """mcqtune's fused LoRA forward vs peft's, at fp32 (the fusion's precision; autocast runs peft's)."""
    from peft.tuners.lora import Linear as PeftLoraLinear

    from mcqtune.methods.lora import FusedLoraLinear

    config = ctx.lora_config("letter", steps)
    config.precision = "fp32"
    stepper = McqtuneStepper(config, ctx.resolved, ctx.encoder, rows)
    fused_name = "fused (mcqtune, fp32)"

    def use(name: str) -> None:
        for module in stepper.model.modules():
            if isinstance(module, PeftLoraLinear):
                module.__class__ = FusedLoraLinear if name == fused_name else PeftLoraLinear

    return _interleave({fused_name: stepper, "peft's forward (fp32)": stepper}, steps, warmup, before=use)


def lever_logits(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    kept = McqtuneStepper(ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows)
    everywhere = McqtuneStepper(ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows)
    everywhere.objective.collate = lambda f: _collate_full(everywhere.objective, f)
    return _interleave({"answer positions only": kept, "every position": everywhere}, steps, warmup)


def _collate_full(objective, features):
    from mcqtune.scoring import collate_letter

    return collate_letter(features, objective.pad_id, full_logits=True)


def lever_grad_checkpointing(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    config = ctx.lora_config("letter", steps)
    plain = McqtuneStepper(config, ctx.resolved, ctx.encoder, rows)
    checkpointed = McqtuneStepper(
        dataclasses.replace(config, gradient_checkpointing=True), ctx.resolved, ctx.encoder, rows
    )
    return _interleave({"off": plain, "on": checkpointed}, steps, warmup)


def lever_adamw(ctx, reps: int) -> dict[str, Any]:
    rows = ctx.rows("medmcqa", "train", ctx.settings.batch_size)  # the trainer needs a batch to plan
    stepper = McqtuneStepper(ctx.lora_config("letter", 1), ctx.resolved, ctx.encoder, rows)
    params = stepper.trainable
    n = sum(p.numel() for p in params)
    variants = {
        "for-loop": {"foreach": False, "fused": False},
        "foreach (mcqtune before)": {"foreach": True, "fused": False},
        "fused (mcqtune now, Trainer default)": {"foreach": False, "fused": True},
    }
    optimizers = {}
    for name, kwargs in variants.items():
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c in copies:
            c.grad = torch.randn_like(c)
        optimizers[name] = torch.optim.AdamW(copies, lr=1e-4, **kwargs)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(reps):
        for name in _rotate(list(variants), i):
            start = time.perf_counter()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)
    return {
        "trainable_params": n,
        **{name: {"median_ms": round(float(np.median(t[1:])) * 1000, 2)} for name, t in times.items()},
    }


def lever_length_grouping(ctx, batch_size: int) -> dict[str, Any]:
    from mcqtune.training.stream import BatchStream

    rows = ctx.rows("medmcqa", "train", 3000)
    features = ctx.encoder.encode_letter(rows, with_answer=True).features
    lengths = [len(f.input_ids) for f in features]
    real = sum(lengths)

    def padded(batches) -> int:
        return sum(len(b) * max(len(f.input_ids) for f in b) for b in batches)

    stream = BatchStream(features, lambda f: len(f.input_ids), batch_size, seed=42)
    grouped = padded(stream._batches)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(features))
    starts = range(0, len(order), batch_size)
    random_batches = [[features[i] for i in order[s : s + batch_size]] for s in starts]
    return {
        "rows": len(features),
        "real_tokens": real,
        "real_share_length_grouped": round(real / grouped, 4),
        "real_share_random_batches": round(real / padded(random_batches), 4),
        "real_share_max_length_512": round(real / (512 * len(features)), 4),
    }


def lever_tokenize_once(ctx) -> dict[str, Any]:
    rows = ctx.rows("medmcqa", "train", 3000)
    start = time.perf_counter()
    ctx.encoder.encode_letter(rows, with_answer=True)
    letter = time.perf_counter() - start
    start = time.perf_counter()
    ctx.encoder.encode_cloze(rows)
    cloze = time.perf_counter() - start
    return {"rows": len(rows), "letter_seconds": round(letter, 2), "cloze_seconds": round(cloze, 2)}


def lever_eval_mode(ctx, n_rows: int) -> dict[str, Any]:
    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.inference import Predictor

    model = Predictor(None, device=ctx.cpu, precision=ctx.precision).module()
    rows = ctx.rows("medmcqa", "validation", n_rows)
    chunks = [rows[i : i + 16] for i in range(0, len(rows), 16)]
    modes = {"no_grad (mcqtune)": nullcontext, "inference_mode": torch.inference_mode}
    seconds = {name: 0.0 for name in modes}
    for i, chunk in enumerate(chunks):
        for name in _rotate(list(modes), i):
            with modes[name]():
                seconds[name] += score_examples(
                    model, ctx.encoder, chunk, "letter", precision=ctx.precision
                ).seconds
    return {name: {"questions_per_second": round(len(rows) / s, 2)} for name, s in seconds.items()}


def lever_compile(ctx, rows, steps: int, warmup: int) -> dict[str, Any]:
    eager = McqtuneStepper(ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows)
    compiled = McqtuneStepper(ctx.lora_config("letter", steps), ctx.resolved, ctx.encoder, rows)
    compiled.model = torch.compile(compiled.model, dynamic=True)
    start = time.perf_counter()
    try:
        compiled.step(eager.next_features())  # compiles
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    compile_seconds = time.perf_counter() - start
    result = _interleave({"eager": eager, "torch.compile(dynamic=True)": compiled}, steps, warmup)
    result["compile_seconds"] = round(compile_seconds, 1)
    return result


def lever_checkpointing_memory(ctx, steps: int) -> dict[str, Any]:
    import tempfile

    from bench.spawn import run_worker

    out = {}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-gc-") as tmp:
        for on in (False, True):
            spec = {
                "method": "lora",
                "steps": steps,
                "batch_size": 16,
                "gradient_checkpointing": on,
                "output": str(Path(tmp) / f"run-{on}"),
            }
            record = run_worker("train", spec, Path(tmp) / "work")
            out["on" if on else "off"] = {
                k: record.get(k) for k in ("peak_rss_mib", "rss_after_imports_mib", "error")
            } | {"tokens_per_second": (record.get("train") or {}).get("tokens_per_second")}
    return out


def run_levers(ctx) -> dict[str, Any]:
    from bench.spawn import log

    quick = ctx.settings.train_steps < 8
    steps, warmup = (3, 1) if quick else (10, 2)
    rows = ctx.rows("medmcqa", "train", steps * ctx.settings.batch_size)
    out: dict[str, Any] = {"steps": steps, "warmup_excluded": warmup, "batch_size": ctx.settings.batch_size}
    plan = [
        ("length_grouping", lambda: lever_length_grouping(ctx, ctx.settings.batch_size)),
        ("tokenize_once", lambda: lever_tokenize_once(ctx)),
        ("adamw", lambda: lever_adamw(ctx, 5 if quick else 30)),
        ("frozen_dtype", lambda: lever_frozen_dtype(ctx, rows, steps, warmup)),
        ("attention", lambda: lever_attention(ctx, rows, steps, warmup)),
        ("lora_dropout", lambda: lever_lora_dropout(ctx, rows, steps, warmup)),
        ("fused_lora", lambda: lever_fused_lora(ctx, rows, steps, warmup)),
        ("threads", lambda: lever_threads(ctx, rows, steps, warmup)),
        ("logits", lambda: lever_logits(ctx, rows, steps, warmup)),
        ("grad_checkpointing", lambda: lever_grad_checkpointing(ctx, rows, steps, warmup)),
        ("grad_checkpointing_memory", lambda: lever_checkpointing_memory(ctx, 2 if quick else 3)),
        ("eval_mode", lambda: lever_eval_mode(ctx, 32 if quick else 128)),
    ]
    if getattr(ctx, "compile_lever", False):  # minutes of compilation on 2 cores: opt-in
        plan.append(("compile", lambda: lever_compile(ctx, rows, steps, warmup)))
    for name, fn in plan:
        log(f"levers: {name}")
        start = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out[name + "_seconds"] = round(time.perf_counter() - start, 1)
        gc.collect()
    return out
