"""mcqtune's performance benchmark: one command, one table, one JSON file (docs/PERFORMANCE.md).

    make bench                           # = .venv/bin/python bench/run.py  (full, <= 15 min on 2 cores)
    .venv/bin/python bench/run.py --quick          # tiny settings, a smoke test (~2 min on a quiet machine)
    .venv/bin/python bench/run.py --only train,eval # some sections
    .venv/bin/python bench/run.py --levers          # also the lever A/Bs (docs/PERFORMANCE.md, lever log)

Same machine, same model (the bundled SmolLM2-135M), same MedMCQA/ARC-Easy rows, same run. A and B
of every throughput comparison run in one process, interleaved step by step (or chunk by chunk, in
A-B-B-A order), so machine noise hits both; peak RSS and start-up need their own processes
(``bench/worker.py``). Sections:

1. ``train``: mcqtune's LoRA step (letter objective) vs the naive HF ``Trainer`` recipe (bench/naive.py),
   real (non-pad) tokens/s, then letter-scored validation accuracy of both after the same examples;
2. ``peak`` + MFU: fp32/bf16 matmul peak; training FLOP/s (4 x non-embedding params per real token
   for frozen-base methods, 6 x for full) over the bf16 peak;
3. ``cloze``: packed options vs K copies of the question: fp32 log-likelihood equality, eval and
   ranking-training questions/s, on ARC-Easy and MedMCQA;
4. ``eval``: letter-logit scoring vs greedy generate-and-parse, questions/s, accuracy, agreement;
5. ``memory``: peak RSS of ``train()`` for every registered method at the same batch (own process
   each), frozen-base weight bytes;
6. ``memory_curve``: RSS after every step of the Trainer over 200 steps (lora, full, adapter, ranking),
   each in its own process; the highest RSS after step 20 over the highest up to it (target <= 1.1;
   RSS swings with batch length, see ``bench/helpers.rss_growth``), and step 200 / step 20 beside it;
7. ``startup``: ``mcqtune eval`` start to first scored batch, cached model vs first GGUF load;
8. ``lm_eval``: ``bench/lm_eval_parity.py``: questions/s of mcqtune's letter and cloze scoring against
   lm-evaluation-harness's loglikelihood scoring of the same questions, and per-question agreement.
   Its first run installs lm-eval into ``.bench-venv`` (the package index is needed once).

Timings are never asserted (tests/test_bench.py checks only that the compared things are equal).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.spawn import log, run_worker  # noqa: E402  (after ROOT is on sys.path)

SECTIONS = ("peak", "trl", "train", "cloze", "eval", "memory", "memory_curve", "startup", "lm_eval")
TARGETS = {
    "train_ratio": 3.0,
    "accuracy_points": 1.0,
    "mfu": 0.50,
    "cloze_ratio": 2.0,
    "cloze_max_abs": 1e-3,
    "eval_ratio": 20.0,
    "qlora_frozen_ratio": 0.35,
    "cached_load_seconds": 3.0,
    "rss_growth": 1.10,
}


@dataclass(frozen=True)
class Settings:
    matmul_sizes: tuple[int, ...]
    matmul_seconds: float
    matmul_rounds: int
    batch_size: int  # training questions per step, every training measurement
    train_steps: int  # section 1: steps of each recipe (both see steps x batch_size examples)
    train_budget_seconds: float  # section 1 stops both recipes after the step that crosses this
    val_rows: int  # section 1: validation rows for the accuracy check
    warmup_steps: int  # excluded from rates
    cloze_equal_rows: int  # section 3: rows for the fp32 equality check
    cloze_eval_rows: int  # section 3: rows for eval questions/s
    cloze_train_steps: int  # section 3: ranking steps per side
    eval_rows: int  # section 4
    eval_chunk: int  # section 4: questions per interleaved chunk (= letter scoring's batch)
    memory_steps: int  # section 5: train() steps per method
    naive_memory_steps: int
    memory_methods: tuple[str, ...] | None  # None: every registered method (+ lora at fp32)
    curve_steps: int  # section memory_curve: Trainer steps per method, RSS after each
    curve_early_step: int  # ... compared with the last step's RSS
    curve_runs: tuple[tuple[str, str, int], ...]  # (method, objective, batch size), each its own process
    trl_steps: int  # section trl: LoRA steps of both whole-process recipes
    trl_batch_size: int
    trl_val_rows: int  # ... letter-scored validation rows of both artifacts afterwards
    lm_eval_rows: int  # section lm_eval: MedMCQA validation rows scored by both tools
    startup_limit: int  # section 6: rows evaluated
    startup_cached_runs: int  # the cached case is run this many times, best kept


FULL = Settings(
    matmul_sizes=(2048, 4096),
    matmul_seconds=1.0,
    matmul_rounds=3,
    batch_size=4,
    train_steps=16,
    train_budget_seconds=300.0,
    val_rows=200,
    warmup_steps=2,
    cloze_equal_rows=64,
    cloze_eval_rows=128,
    cloze_train_steps=8,
    eval_rows=64,
    eval_chunk=16,
    memory_steps=4,
    naive_memory_steps=2,
    memory_methods=None,
    curve_steps=200,
    curve_early_step=20,
    curve_runs=(
        ("lora", "letter", 8),
        ("full", "letter", 4),
        ("adapter", "letter", 4),
        ("lora", "ranking", 4),
    ),
    trl_steps=60,
    trl_batch_size=8,
    trl_val_rows=500,
    lm_eval_rows=100,
    startup_limit=16,
    startup_cached_runs=2,
)
QUICK = Settings(
    matmul_sizes=(1024,),
    matmul_seconds=0.2,
    matmul_rounds=2,
    batch_size=1,
    train_steps=3,
    train_budget_seconds=60.0,
    val_rows=16,
    warmup_steps=1,
    cloze_equal_rows=8,
    cloze_eval_rows=16,
    cloze_train_steps=2,
    eval_rows=8,
    eval_chunk=8,
    memory_steps=1,
    naive_memory_steps=1,
    memory_methods=("lora", "qlora"),
    curve_steps=25,
    curve_early_step=5,
    curve_runs=(("lora", "letter", 8),),
    trl_steps=3,
    trl_batch_size=2,
    trl_val_rows=16,
    lm_eval_rows=8,
    startup_limit=4,
    startup_cached_runs=1,
)


# ------------------------------------------------------------------------------------------- context
class Context:
    """What the in-process sections share: the resolved model, tokenizer, encoder and data rows."""

    def __init__(self, settings: Settings, out_dir: Path):
        from mcqtune.models import load_tokenizer, resolve_model
        from mcqtune.prompt import PromptEncoder

        self.settings = settings
        self.out_dir = out_dir
        self.resolved = resolve_model(None)
        self.tokenizer = load_tokenizer(self.resolved)
        self.encoder = PromptEncoder(self.tokenizer)
        self.cpu = __import__("torch").device("cpu")
        self._rows: dict[tuple[str, str, int], list] = {}
        self.compile_lever = False
        from bench.naive import GENERATE_MAX_NEW_TOKENS

        self.generate_tokens = GENERATE_MAX_NEW_TOKENS

    def rows(self, dataset: str, split: str, n: int) -> list:
        from mcqtune.data import bundled_path, load_examples

        key = (dataset, split, n)
        if key not in self._rows:
            self._rows[key] = load_examples(bundled_path(dataset, split), limit=n).examples
        return self._rows[key]

    def lora_config(self, objective: str, steps: int):
        from mcqtune.config import build_config

        config = build_config(
            {
                "method": "lora",
                "objective": objective,
                "max_steps": steps,
                "batch_size": self.settings.batch_size,
                "precision": "auto",
                # The naive recipe sees the options in the data's order: so does mcqtune here, so that
                # both recipes train on identical inputs and the accuracy check compares like with like.
                "shuffle_options": False,
            }
        )
        config.validation = None
        return config


# ------------------------------------------------------------------------------------------- sections
def section_peak(ctx: Context) -> dict[str, Any]:
    from bench.helpers import matmul_peaks

    s = ctx.settings
    by_size = {str(n): matmul_peaks(n, s.matmul_seconds, s.matmul_rounds) for n in s.matmul_sizes}
    best = {k: max(v[k] for v in by_size.values()) for k in ("fp32", "bf16")}
    return {"gflops": best, "by_size": by_size, "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2)}


def section_train(ctx: Context) -> dict[str, Any]:
    """Item 1: interleaved steps of mcqtune's LoRA step and the naive Trainer, then accuracy of both."""
    from bench.helpers import McqtuneStepper, Timings, non_embedding_params
    from bench.naive import (
        NAIVE_MAX_LENGTH,
        CountingCollator,
        naive_dataset,
        naive_lora_model,
        naive_texts,
        naive_tokenizer,
        naive_trainer,
    )
    from transformers import TrainerCallback

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.evaluation.metrics import compute_metrics

    s = ctx.settings
    n_examples = s.train_steps * s.batch_size
    train_rows = ctx.rows("medmcqa", "train", n_examples)
    val_rows = ctx.rows("medmcqa", "validation", s.val_rows)
    config = ctx.lora_config("letter", s.train_steps)
    stepper = McqtuneStepper(config, ctx.resolved, ctx.encoder, train_rows)

    tokenizer = naive_tokenizer(ctx.resolved.path)
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
        scored = score_examples(model, ctx.encoder, val_rows, "letter", batch_size=16, precision="bf16")
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


def run_measured(name: str, command: list[str], tmp: Path) -> dict[str, Any]:
    """``command`` as its own process under bench/peak.py: exit code, wall seconds, peak RSS."""
    out, logfile = tmp / f"{name}.json", tmp / f"{name}.log"
    subprocess.call([sys.executable, str(ROOT / "bench" / "peak.py"), str(out), str(logfile), "--", *command])
    record = json.loads(out.read_text()) if out.exists() else {"exit_code": None}
    if record["exit_code"] != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-8:]
        raise RuntimeError(f"{name} failed (exit {record['exit_code']}): " + " | ".join(tail))
    return record


def section_trl(ctx: Context) -> dict[str, Any]:
    """Issue 12's honest baseline: the notebook's TRL SFTTrainer recipe vs ``mcqtune train``, whole
    processes (imports and model load included), the same LoRA steps on the same MedMCQA rows; then
    both artifacts letter-scored on the same validation rows by the same scorer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.evaluation.metrics import compute_metrics

    s = ctx.settings
    steps, batch = str(s.trl_steps), str(s.trl_batch_size)
    val_rows = ctx.rows("medmcqa", "validation", s.trl_val_rows)
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-trl-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"trl: TRL SFTTrainer recipe, {steps} LoRA steps at batch {batch}, own process")
        trl = run_measured(
            "trl",
            [
                sys.executable,
                str(ROOT / "bench" / "trl_recipe.py"),
                str(tmp / "trl"),
                "--steps",
                steps,
                "--batch-size",
                batch,
            ],
            tmp,
        )
        trl |= json.loads((tmp / "trl" / "trl.json").read_text())
        log(f"trl: mcqtune train, the same work, own process (TRL took {trl['wall_seconds']:.0f} s)")
        # The notebook's recipe keeps the data's option order: so does mcqtune here (same inputs).
        train = [sys.executable, "-m", "mcqtune", "train", "--method", "lora", "--objective", "letter"]
        train += ["--train", "medmcqa", "--no-validation", "--max-steps", steps, "--batch-size", batch]
        train += ["--no-shuffle-options"]
        ours = run_measured("mcqtune", [*train, "--output", str(tmp / "mcqtune")], tmp)
        # TRL's SFTConfig turns gradient checkpointing on by default: mcqtune with the same memory strategy.
        log("trl: mcqtune train --gradient-checkpointing, the same work, own process")
        checkpointed = run_measured(
            "mcqtune_checkpointed",
            [*train, "--gradient-checkpointing", "--output", str(tmp / "mcqtune_checkpointed")],
            tmp,
        )
        accuracy = {}
        for name in ("trl", "mcqtune", "mcqtune_checkpointed"):
            adapter = tmp / name / "adapter"
            log(f"trl: letter-scored validation accuracy of the {name} artifact on {len(val_rows)} rows")
            base = AutoModelForCausalLM.from_pretrained(ctx.resolved.path, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(adapter))
            scored = score_examples(model, ctx.encoder, val_rows, "letter", precision="bf16")
            m = compute_metrics(scored)
            accuracy[name] = {k: m[k] for k in ("accuracy", "ci95", "n", "majority_baseline")} | {
                "predicted_letter_distribution": m["predicted_letter_distribution"]
            }
            del model, base
    return {
        "steps": s.trl_steps,
        "batch_size": s.trl_batch_size,
        "trl": trl,
        "mcqtune": ours,
        "mcqtune_checkpointed": checkpointed,
        "wall_ratio": round(trl["wall_seconds"] / ours["wall_seconds"], 2),
        "peak_rss_ratio": round(ours["peak_rss_mib"] / trl["peak_rss_mib"], 2),
        "checkpointed_wall_ratio": round(trl["wall_seconds"] / checkpointed["wall_seconds"], 2),
        "checkpointed_peak_rss_ratio": round(checkpointed["peak_rss_mib"] / trl["peak_rss_mib"], 2),
        "accuracy": accuracy,
        "accuracy_difference_points": round(
            (accuracy["mcqtune"]["accuracy"] - accuracy["trl"]["accuracy"]) * 100, 2
        ),
    }


def section_cloze(ctx: Context) -> dict[str, Any]:
    """Item 3: packed options vs one row per option, fp32 equality, eval and ranking-training speed."""
    from bench.helpers import McqtuneStepper, Timings, cloze_logliks, max_abs_difference, option_lengths

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.inference import Predictor

    s = ctx.settings
    pad = ctx.tokenizer.pad_token_id
    fp32 = Predictor(None, device=ctx.cpu, precision="fp32").module()
    bf16 = Predictor(None, device=ctx.cpu, precision="bf16").module()
    out: dict[str, Any] = {}
    for dataset in ("arc_easy", "medmcqa"):
        log(f"cloze: {dataset}")
        rows = ctx.rows(dataset, "validation", max(s.cloze_equal_rows, s.cloze_eval_rows))
        features = ctx.encoder.encode_cloze(rows[: s.cloze_equal_rows]).features
        packed = cloze_logliks(fp32, features, pad, packed=True)
        copies = cloze_logliks(fp32, features, pad, packed=False)
        lengths = option_lengths(features, packed.shape[1])  # scoring ranks by the mean log-likelihood
        equality = {
            "rows": len(features),
            "max_abs_loglik_difference": max_abs_difference(packed, copies),
            "same_predictions": int(((packed / lengths).argmax(1) == (copies / lengths).argmax(1)).sum()),
        }

        eval_rows = rows[: s.cloze_eval_rows]
        timings = {"a": Timings(), "b": Timings()}
        chunk = 16
        chunks = [eval_rows[i : i + chunk] for i in range(0, len(eval_rows), chunk)]
        for i, chunk_rows in enumerate(chunks):
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                kwargs = {"batch_size": 16, "packed": side == "a", "precision": "bf16"}
                scored = score_examples(bf16, ctx.encoder, chunk_rows, "cloze", **kwargs)
                timings[side].add(scored.seconds, 0, len(chunk_rows))
        eval_ratio = timings["a"].questions_per_second() / max(timings["b"].questions_per_second(), 1e-9)

        config = ctx.lora_config("ranking", 2 * s.cloze_train_steps)
        train_rows = ctx.rows(dataset, "train", s.cloze_train_steps * s.batch_size)
        stepper = McqtuneStepper(config, ctx.resolved, ctx.encoder, train_rows)
        train_t = {"a": Timings(), "b": Timings()}
        for i in range(s.cloze_train_steps):
            features_i = stepper.next_features()
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                stepper.objective.packed = side == "a"
                stepper.step(features_i, timings=train_t[side])
        w = min(1, s.cloze_train_steps - 1)
        train_ratio = train_t["a"].questions_per_second(w) / max(train_t["b"].questions_per_second(w), 1e-9)
        del stepper
        out[dataset] = {
            "equality_fp32": equality,
            "eval": {
                "rows": len(eval_rows),
                "packed": timings["a"].to_dict(),
                "copies": timings["b"].to_dict(),
                "ratio_questions_per_second": round(eval_ratio, 2),
            },
            "ranking_train": {
                "steps": s.cloze_train_steps,
                "batch_size": s.batch_size,
                "packed": train_t["a"].to_dict(w),
                "copies": train_t["b"].to_dict(w),
                "ratio_questions_per_second": round(train_ratio, 2),
            },
        }
    return out


def section_eval(ctx: Context) -> dict[str, Any]:
    """Item 4: letter-logit scoring (mcqtune eval's defaults) vs greedy generate-and-parse."""
    import numpy as np
    import torch
    from bench.helpers import Timings
    from bench.naive import generate_and_parse, naive_tokenizer
    from transformers import AutoModelForCausalLM

    from mcqtune.evaluation.evaluate import score_examples
    from mcqtune.inference import Predictor

    s = ctx.settings
    rows = ctx.rows("medmcqa", "validation", s.eval_rows)
    ours_model = Predictor(None, device=ctx.cpu, precision="bf16").module()
    fp32_model = Predictor(None, device=ctx.cpu, precision="fp32").module()
    gen_model = AutoModelForCausalLM.from_pretrained(ctx.resolved.path, dtype=torch.float32)
    gen_tokenizer = naive_tokenizer(ctx.resolved.path)
    timings = {"a": Timings(), "b": Timings()}
    scores = np.full((len(rows), max(len(r.choices) for r in rows)), -np.inf)
    generated_pred, first_letter = [], []
    chunks = [list(range(i, min(i + s.eval_chunk, len(rows)))) for i in range(0, len(rows), s.eval_chunk)]
    log(f"eval: {len(rows)} MedMCQA rows, chunks of {s.eval_chunk}, A-B-B-A")
    results: dict[int, Any] = {}
    for i, idx in enumerate(chunks):
        chunk_rows = [rows[j] for j in idx]
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            if side == "a":
                scored = score_examples(
                    ours_model, ctx.encoder, chunk_rows, "letter", batch_size=s.eval_chunk, precision="bf16"
                )
                timings["a"].add(scored.seconds, 0, len(chunk_rows))
                scores[idx, : scored.scores.shape[1]] = scored.scores
            else:
                gen = generate_and_parse(
                    gen_model, gen_tokenizer, ctx.encoder, chunk_rows, max_new_tokens=ctx.generate_tokens
                )
                timings["b"].add(gen.seconds, 0, len(chunk_rows))
                results[i] = gen
    for i in range(len(chunks)):
        generated_pred += results[i].predictions.tolist()
        first_letter += results[i].first_is_letter.tolist()
    generated_pred = np.array(generated_pred)
    first_letter = np.array(first_letter, dtype=bool)
    fp32_scored = score_examples(
        fp32_model, ctx.encoder, rows, "letter", batch_size=s.eval_chunk, precision="fp32"
    )
    gold = np.array([r.answer for r in rows])
    letter_pred = scores.argmax(1)
    fp32_pred = fp32_scored.predictions
    subset = first_letter
    ratio = timings["a"].questions_per_second() / max(timings["b"].questions_per_second(), 1e-9)
    return {
        "rows": len(rows),
        "max_new_tokens": ctx.generate_tokens,
        "letter_scoring": timings["a"].to_dict() | {"precision": "bf16", "batch_size": s.eval_chunk},
        "letter_scoring_fp32_questions_per_second": round(len(rows) / fp32_scored.seconds, 2),
        "generate_and_parse": timings["b"].to_dict() | {"precision": "fp32", "batch_size": 1},
        "ratio_questions_per_second": round(ratio, 2),
        "accuracy": {
            "letter_scoring_bf16": round(float((letter_pred == gold).mean()), 4),
            "letter_scoring_fp32": round(float((fp32_pred == gold).mean()), 4),
            "generate_and_parse": round(float((generated_pred == gold).mean()), 4),
            "generate_unparsed": int((generated_pred < 0).sum()),
        },
        "first_token_is_letter": {
            "rows": int(subset.sum()),
            "agreement_fp32": int((fp32_pred[subset] == generated_pred[subset]).sum()),
            "agreement_bf16": int((letter_pred[subset] == generated_pred[subset]).sum()),
            "accuracy_letter_fp32": _mean(fp32_pred[subset] == gold[subset]),
            "accuracy_generate": _mean(generated_pred[subset] == gold[subset]),
        },
    }


def _mean(values) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


def section_memory(ctx: Context) -> dict[str, Any]:
    """Item 5: every registered method's real train() for a few steps, each in its own process."""
    from mcqtune.methods import METHODS

    s = ctx.settings
    names = sorted(METHODS) if s.memory_methods is None else [m for m in s.memory_methods if m in METHODS]
    runs = [(name, "auto") for name in names] + [("lora", "fp32")]
    out: dict[str, Any] = {"steps": s.memory_steps, "batch_size": s.batch_size, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-mem-") as tmp:
        for method, precision in runs:
            log(f"memory: {method} ({precision}), {s.memory_steps} steps in its own process")
            spec = {
                "method": method,
                "precision": precision,
                "steps": s.memory_steps,
                "batch_size": s.batch_size,
                "output": str(Path(tmp) / f"run-{method}-{precision}"),
            }
            out["runs"][f"{method}/{precision}"] = run_worker("train", spec, Path(tmp) / "work")
        log(f"memory: naive Trainer recipe, {s.naive_memory_steps} steps in its own process")
        config = ctx.lora_config("letter", s.naive_memory_steps)
        spec = {
            "steps": s.naive_memory_steps,
            "batch_size": s.batch_size,
            "options": config.method_options,
            "lr": config.lr,
            "output": str(Path(tmp) / "naive"),
        }
        out["naive"] = run_worker("naive", spec, Path(tmp) / "work")
    return out


def section_memory_curve(ctx: Context) -> dict[str, Any]:
    """RSS after every training step (issue 12: it must not grow): the late/early ratio per method."""
    s = ctx.settings
    out: dict[str, Any] = {"steps": s.curve_steps, "early_step": s.curve_early_step, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-curve-") as tmp:
        for method, objective, batch_size in s.curve_runs:
            log(f"memory_curve: {method} {objective} batch {batch_size}, {s.curve_steps} steps, own process")
            spec = {
                "method": method,
                "objective": objective,
                "train": "arc_easy" if objective == "ranking" else "medmcqa",
                "batch_size": batch_size,
                "steps": s.curve_steps,
                "early_step": s.curve_early_step,
            }
            record = run_worker("rss_curve", spec, Path(tmp) / "work")
            out["runs"][f"{method}/{objective}/b{batch_size}"] = record
            if "peak_late_over_early" in record:
                log(
                    f"memory_curve: highest RSS after step {record['early_step']} / up to it = "
                    f"{record['peak_late_over_early']}; RSS step {record['late_step']} / step "
                    f"{record['early_step']} = {record['last_over_early']} "
                    f"(peak {record['peak_rss_mib']:.0f} MiB)"
                )
    return out


def section_startup(ctx: Context) -> dict[str, Any]:
    """Item 6: `mcqtune eval` start to first scored batch: first GGUF load (empty cache) vs cached."""
    s = ctx.settings
    argv = ["eval", "--data", "medmcqa", "--limit", str(s.startup_limit), "--scoring", "letter"]
    out: dict[str, Any] = {"command": "mcqtune " + " ".join(argv)}
    with tempfile.TemporaryDirectory(prefix="mcqtune-bench-start-") as tmp:
        for case in ("cold", *["cached"] * s.startup_cached_runs):
            env = dict(os.environ)
            if case == "cold":
                env["MCQTUNE_CACHE"] = str(Path(tmp) / "empty-cache")
            log(f"startup: {case}")
            record = run_worker("startup", {"argv": argv, "t0": time.time()}, Path(tmp) / "work", env=env)
            if "marks" in record:
                m = record["marks"]
                t0 = m["process_start"]
                record["seconds"] = {
                    "imports": round(m["imports_done"] - t0, 2),
                    "model_load": round(m.get("load_end", t0) - m.get("load_start", t0), 2),
                    "to_first_batch": round(m["first_batch"] - t0, 2) if "first_batch" in m else None,
                }
            out.setdefault(case, []).append(record)
    cached = [r["seconds"] for r in out.get("cached", []) if "seconds" in r]
    if cached:
        out["cached_best"] = min(cached, key=lambda x: x["to_first_batch"] or 1e9)
    return out


def section_lm_eval(ctx: Context) -> dict[str, Any]:
    """Item 4 of issue 12: evaluation throughput against lm-evaluation-harness, same questions, same
    batch size, each tool timed with its model loaded; predictions compared per question."""
    out = ctx.out_dir / "lm_eval_parity"
    rows = ctx.settings.lm_eval_rows
    command = [sys.executable, str(ROOT / "bench" / "lm_eval_parity.py"), "--n", str(rows), "--out", str(out)]
    log(f"lm_eval: {rows} MedMCQA rows, letter and cloze, mcqtune vs lm-eval")
    done = subprocess.run(command, capture_output=True, text=True)
    if not (out / "parity.json").exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        raise RuntimeError(f"lm_eval_parity failed (exit {done.returncode}): " + " | ".join(tail))
    return json.loads((out / "parity.json").read_text())


def section_levers(ctx: Context) -> dict[str, Any]:
    from bench.levers import run_levers

    return run_levers(ctx)


SECTION_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "peak": section_peak,
    "trl": section_trl,
    "train": section_train,
    "cloze": section_cloze,
    "eval": section_eval,
    "memory": section_memory,
    "memory_curve": section_memory_curve,
    "startup": section_startup,
    "lm_eval": section_lm_eval,
    "levers": section_levers,
    "limits": lambda ctx: __import__("bench.limits", fromlist=["run_limits"]).run_limits(ctx),  # --only
}


# ------------------------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        bf16 = "avx512_bf16" in flags
    except OSError:
        bf16 = False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": bf16,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def _fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:{spec}}{unit}"


def _status(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT MET")


def _training_peak(record: dict[str, Any]) -> float:
    """Peak RSS of the training phase (after the model load), else of the whole process."""
    return record.get("peak_rss_training_mib") or record["peak_rss_mib"]


def summarize(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows of the one table: (measurement, mcqtune, baseline, ratio, target, status)."""
    from bench.helpers import train_flops_per_token

    rows: list[tuple[str, str, str, str, str, str]] = []
    sec = results["sections"]
    peak = (sec.get("peak") or {}).get("gflops")
    trl = sec.get("trl")
    if trl and "error" not in trl:  # the headline: the recipe users actually run
        work = f"{trl['steps']} LoRA steps b{trl['batch_size']}"
        rows.append(
            (
                f"0 {work}, whole process wall s",
                _fmt(trl["mcqtune"]["wall_seconds"], ".0f"),
                _fmt(trl["trl"]["wall_seconds"], ".0f") + " (TRL SFTTrainer)",
                _fmt(trl["wall_ratio"], ".2f", "x"),
                ">= 3x",
                _status(trl["wall_ratio"] >= TARGETS["train_ratio"]),
            )
        )
        rows.append(
            (
                f"0 {work}, peak RSS MiB",
                _fmt(trl["mcqtune"]["peak_rss_mib"], ".0f"),
                _fmt(trl["trl"]["peak_rss_mib"], ".0f") + " (TRL SFTTrainer)",
                _fmt(trl["peak_rss_ratio"], ".2f", "x"),
                "< 1x",
                _status(trl["peak_rss_ratio"] < 1.0),
            )
        )
        if "mcqtune_checkpointed" in trl:  # TRL's own memory strategy (gradient checkpointing) on both sides
            for label, key, ratio, target in (
                ("wall s", "wall_seconds", "checkpointed_wall_ratio", ">= 3x"),
                ("peak RSS MiB", "peak_rss_mib", "checkpointed_peak_rss_ratio", "< 1x"),
            ):
                ok = trl[ratio] >= TARGETS["train_ratio"] if target == ">= 3x" else trl[ratio] < 1.0
                rows.append(
                    (
                        f"0 {work}, --gradient-checkpointing, {label}",
                        _fmt(trl["mcqtune_checkpointed"][key], ".0f"),
                        _fmt(trl["trl"][key], ".0f") + " (TRL SFTTrainer)",
                        _fmt(trl[ratio], ".2f", "x"),
                        target,
                        _status(ok),
                    )
                )
        acc = trl["accuracy"]
        rows.append(
            (
                f"0 val accuracy after it (n={acc['mcqtune']['n']}, letter)",
                _fmt(acc["mcqtune"]["accuracy"] * 100, ".1f", "%"),
                _fmt(acc["trl"]["accuracy"] * 100, ".1f", "%") + " (TRL SFTTrainer)",
                _fmt(trl["accuracy_difference_points"], "+.1f", " pt"),
                ">= TRL's CI low",
                _status(acc["mcqtune"]["accuracy"] >= acc["trl"]["ci95"][0]),  # not below TRL's 95% CI
            )
        )
    train = sec.get("train")
    if train and "error" not in train:
        ratio = train["ratio_tokens_per_second"]
        rows.append(
            (
                "1 LoRA train, real tok/s",
                _fmt(train["mcqtune"]["tokens_per_second"]),
                _fmt(train["naive"]["tokens_per_second"]) + " (naive Trainer)",
                _fmt(ratio, ".2f", "x"),
                ">= 3x",
                _status(ratio >= TARGETS["train_ratio"]),
            )
        )
        acc = train["accuracy"]
        diff = train["accuracy_difference_points"]
        rows.append(
            (
                f"1 val accuracy after {train['examples']} ex (n={acc['mcqtune']['n']})",
                _fmt(acc["mcqtune"]["accuracy"] * 100, ".1f", "%"),
                _fmt(acc["naive"]["accuracy"] * 100, ".1f", "%")
                + f" (0-shot {acc['zero_shot']['accuracy'] * 100:.1f}%)",
                _fmt(diff, "+.1f", " pt"),
                "+-1 pt",
                _status(abs(diff) <= TARGETS["accuracy_points"]),
            )
        )
        if peak:
            flops = train_flops_per_token(train["non_embedding_params"], trains_base=False)
            mfu = train["mcqtune"]["tokens_per_second"] * flops / (peak["bf16"] * 1e9)
            naive_mfu = train["naive"]["tokens_per_second"] * flops / (peak["fp32"] * 1e9)
            rows.append(
                (
                    "2 MFU (4N/token) vs matmul peak",
                    _fmt(mfu * 100, ".1f", "% of bf16"),
                    _fmt(naive_mfu * 100, ".1f", "% of fp32"),
                    "",
                    ">= 50%",
                    _status(mfu >= TARGETS["mfu"]),
                )
            )
            train["mfu"] = {"mcqtune_vs_bf16_peak": round(mfu, 4), "naive_vs_fp32_peak": round(naive_mfu, 4)}
    if peak:
        rows.append(
            (
                "2 matmul peak GFLOP/s",
                _fmt(peak["bf16"], ".0f", " bf16"),
                _fmt(peak["fp32"], ".0f", " fp32"),
                _fmt(peak["bf16"] / peak["fp32"], ".2f", "x"),
                "",
                "-",
            )
        )
    memory = sec.get("memory") or {}
    naive_mem = memory.get("naive") or {}
    lora_mem = (memory.get("runs") or {}).get("lora/auto") or {}
    if "peak_rss_mib" in naive_mem and "peak_rss_mib" in lora_mem:
        ours, theirs = _training_peak(lora_mem), _training_peak(naive_mem)
        rows.append(
            (
                f"1 peak RSS MiB training | process, batch {memory['batch_size']}",
                f"{ours:.0f} | {lora_mem['peak_rss_mib']:.0f}",
                f"{theirs:.0f} | {naive_mem['peak_rss_mib']:.0f} (naive Trainer)",
                _fmt(ours / theirs, ".2f", "x"),
                "",
                "-",
            )
        )
    cloze = sec.get("cloze") or {}
    for dataset, c in cloze.items():
        if not isinstance(c, dict) or "eval" not in c:
            continue
        diff = c["equality_fp32"]["max_abs_loglik_difference"]
        for kind, label in (("eval", "eval"), ("ranking_train", "ranking train")):
            r = c[kind]["ratio_questions_per_second"]
            rows.append(
                (
                    f"3 cloze {label} q/s, {dataset}",
                    _fmt(c[kind]["packed"]["questions_per_second"], ".2f") + " packed",
                    _fmt(c[kind]["copies"]["questions_per_second"], ".2f") + " K copies",
                    _fmt(r, ".2f", "x"),
                    ">= 2x",
                    _status(r >= TARGETS["cloze_ratio"]),
                )
            )
        rows.append(
            (
                f"3 max |dloglik| fp32, {dataset}",
                _fmt(diff, ".1e"),
                f"{c['equality_fp32']['same_predictions']}/{c['equality_fp32']['rows']} same argmax",
                "",
                "<= 1e-3",
                _status(diff <= TARGETS["cloze_max_abs"]),
            )
        )
    ev = sec.get("eval")
    if ev and "error" not in ev:
        r = ev["ratio_questions_per_second"]
        rows.append(
            (
                "4 eval q/s: letter logits vs generate",
                _fmt(ev["letter_scoring"]["questions_per_second"], ".2f"),
                _fmt(ev["generate_and_parse"]["questions_per_second"], ".2f"),
                _fmt(r, ".1f", "x"),
                ">= 20x",
                _status(r >= TARGETS["eval_ratio"]),
            )
        )
        fl = ev["first_token_is_letter"]
        same = fl["rows"] > 0 and fl["agreement_fp32"] == fl["rows"]
        rows.append(
            (
                f"4 same answers when 1st token is a letter ({fl['rows']}/{ev['rows']})",
                _fmt(fl["accuracy_letter_fp32"], ".3f") + " acc",
                _fmt(fl["accuracy_generate"], ".3f") + " acc",
                f"{fl['agreement_fp32']}/{fl['rows']} agree",
                "equal",
                _status(same if fl["rows"] else None),
            )
        )
    if memory.get("runs"):
        fp32_ref = (memory["runs"].get("lora/fp32") or {}).get("parameters", {}).get("frozen_base_bytes")
        lora_fp32 = memory["runs"].get("lora/fp32") or {}
        lora_fp32_rss = _training_peak(lora_fp32) if "peak_rss_mib" in lora_fp32 else None
        for key, run in memory["runs"].items():
            if "error" in run:
                rows.append((f"5 {key}", "failed", run["error"], "", "", "-"))
                continue
            frozen = run["parameters"]["frozen_base_bytes"]
            share = frozen / fp32_ref if fp32_ref else None
            target, status = "", "-"
            if key.startswith("qlora"):
                target = "<=0.35x, RSS<lora/fp32"
                status = _status(
                    share is not None
                    and share <= TARGETS["qlora_frozen_ratio"]
                    and lora_fp32_rss is not None
                    and _training_peak(run) < lora_fp32_rss
                )
            rows.append(
                (
                    f"5 {key}: peak RSS MiB training | process",
                    f"{_training_peak(run):.0f} | {run['peak_rss_mib']:.0f}",
                    _fmt(frozen / 2**20, ".0f") + " MiB frozen",
                    _fmt(share, ".2f", "x fp32"),
                    target,
                    status,
                )
            )
    st = sec.get("startup") or {}
    best = st.get("cached_best")
    cold = next((r.get("seconds") for r in st.get("cold", []) if "seconds" in r), None)
    if best:
        rows.append(
            (
                "6 eval start -> 1st batch s (cached | cold)",
                _fmt(best["to_first_batch"], ".1f"),
                _fmt(cold and cold["to_first_batch"], ".1f") + " cold GGUF",
                "",
                "",
                "-",
            )
        )
        rows.append(
            (
                "6 model load s (cached | cold)",
                _fmt(best["model_load"], ".2f"),
                _fmt(cold and cold["model_load"], ".2f") + " cold GGUF",
                "",
                "<= 3 s",
                _status(best["model_load"] <= TARGETS["cached_load_seconds"]),
            )
        )
    curve = sec.get("memory_curve") or {}
    for key, run in (curve.get("runs") or {}).items():
        if "peak_late_over_early" not in run:
            rows.append((f"5 RSS curve {key}", "failed", str(run.get("error", "")), "", "", "-"))
            continue
        rows.append(
            (
                f"5 max RSS steps {run['early_step'] + 1}-{run['late_step']} / 1-{run['early_step']}, {key}",
                _fmt(run["peak_late_over_early"], ".3f", "x"),
                f"step {run['late_step']} / {run['early_step']}: {run['last_over_early']:.2f}x; "
                f"peak {run['peak_rss_mib']:.0f} MiB",
                "",
                f"<= {TARGETS['rss_growth']}x",
                _status(run["peak_late_over_early"] <= TARGETS["rss_growth"]),
            )
        )
    lm_eval = sec.get("lm_eval") or {}
    for scoring in ("letter", "cloze"):
        r = lm_eval.get(scoring)
        if not r:
            continue
        ours = r["bf16"]
        rows.append(
            (
                f"7 eval q/s vs lm-eval, {scoring} (n={lm_eval['rows']})",
                _fmt(ours["questions_per_second"], ".2f")
                + f" | fp32 {r['fp32']['questions_per_second']:.2f}",
                _fmt(r["lm_eval_questions_per_second"], ".2f") + " (lm-eval fp32)",
                _fmt(ours["speedup_vs_lm_eval"], ".2f", "x"),
                "",
                "-",
            )
        )
        rows.append(
            (
                f"7 same answers as lm-eval, {scoring} (fp32 | bf16)",
                f"{r['fp32']['identical_predictions']} | {ours['identical_predictions']}",
                f"of {lm_eval['rows']}",
                "",
                "fp32 >= 99%",
                _status(r["fp32"]["agreement"] >= 0.99),
            )
        )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    header = ("measurement", "mcqtune", "baseline", "ratio", "target", "status")
    table = [header, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


DOC = ROOT / "docs" / "PERFORMANCE.md"
DOC_BEGIN = "<!-- bench-results:begin (written by bench/run.py; do not edit by hand) -->"
DOC_END = "<!-- bench-results:end -->"


def results_block(results: dict[str, Any], table: str) -> str:
    m = results["machine"]
    start, end = results["load_average_start"][0], results["load_average_end"][0]
    # The 1-minute load average at the end includes the benchmark's own threads (~2 on 2 cores): only
    # the load before it started says whether other work shared the machine.
    noisy = start > 0.5 * (m["cores"] or 1)
    lines = [
        f"Latest full run: {results['date']}, `make bench`, {results['total_seconds'] / 60:.1f} min "
        f"(sections: {', '.join(f'{k} {v:.0f} s' for k, v in results['section_seconds'].items())}).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, AVX512-bf16 "
        f"{'yes' if m['avx512_bf16'] else 'no'}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; load average {start:.1f} at the start, {end:.1f} at the end (its own threads)"
        + (" (**other work was running: timings are pessimistic**)." if noisy else "."),
        "",
        table,
    ]
    return "\n".join(lines)


def update_doc(block: str, path: Path = DOC) -> bool:
    """Replace the results block of docs/PERFORMANCE.md; False if the markers are missing."""
    if not path.exists():
        return False
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        return False
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{block}\n{DOC_END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of every section")
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)},levers")
    parser.add_argument("--levers", action="store_true", help="also run the lever A/Bs (bench/levers.py)")
    parser.add_argument(
        "--compile-lever", action="store_true", help="levers: also torch.compile (many minutes on 2 cores)"
    )
    parser.add_argument(
        "--generate-tokens",
        type=int,
        default=None,
        help="eval: max_new_tokens of the generate-and-parse baseline (default 8)",
    )
    parser.add_argument(
        "--no-update-doc",
        action="store_true",
        help="a full run (no --quick/--only) rewrites the results block of docs/PERFORMANCE.md unless given",
    )
    parser.add_argument(
        "--trl-steps", type=int, help="trl: LoRA steps of both recipes (default 60; issue 12's long run: 300)"
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="where the JSON and table go")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.trl_steps:
        settings = dataclasses.replace(settings, trl_steps=args.trl_steps)
    sections = args.only.split(",") if args.only else list(SECTIONS) + (["levers"] if args.levers else [])
    unknown = [s for s in sections if s not in SECTION_FUNCS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    if "train" in sections and "peak" not in sections:
        sections.insert(0, "peak")  # MFU needs the peak of the same run
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    json_path = out_dir / f"bench-{mode}.json"

    from mcqtune.quiet import quiet_libraries

    quiet_libraries()
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "settings": dataclasses.asdict(settings),
        "targets": TARGETS,
        "sections": {},
        "section_seconds": {},
    }
    ctx = Context(settings, out_dir)
    ctx.compile_lever = args.compile_lever
    ctx.generate_tokens = args.generate_tokens or ctx.generate_tokens
    for name in sections:
        log(f"section {name}")
        t = time.perf_counter()
        try:
            results["sections"][name] = SECTION_FUNCS[name](ctx)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        results["section_seconds"][name] = round(time.perf_counter() - t, 1)
        json_path.write_text(json.dumps(results, indent=1, default=str))
    results["load_average_end"] = os.getloadavg()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    rows = summarize(results)
    results["table"] = [list(r) for r in rows]
    table = format_table(rows)
    json_path.write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"bench-{mode}.md").write_text(table + "\n")
    m = results["machine"]
    print(
        f"\nmcqtune bench ({mode}), {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), {results['total_seconds']:.0f} s, "
        f"load average {results['load_average_start'][0]:.1f} -> {results['load_average_end'][0]:.1f}"
    )
    print(table)
    failed = [n for n, r in results["sections"].items() if isinstance(r, dict) and "error" in r]
    if failed:
        print(f"sections that failed: {', '.join(failed)} (see the traceback above)")
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    full_run = not args.quick and not args.only and not args.no_update_doc and not failed
    if full_run and update_doc(results_block(results, table)):
        print(f"updated the results block of {DOC.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
