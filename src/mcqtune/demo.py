"""`mcqtune demo` (what `make demo` runs): zero-shot vs LoRA on the bundled MedMCQA and ARC-Easy.

For each dataset it evaluates the base model zero-shot in both formulations, trains LoRA with the
default objective for this model size, evaluates the adapter on the full validation split, and prints
one table with accuracy, 95% CI, the majority-letter baseline and the predicted-letter distribution.
Budgeted for a 2-core CPU (<= 20 minutes including set-up).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mcqtune.atomic import atomic_write_json, atomic_write_text
from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.format import format_distribution
from mcqtune.evaluation.metrics import compute_metrics
from mcqtune.models import load_model, load_tokenizer, resolve_model, resolve_precision
from mcqtune.prompt import PromptEncoder
from mcqtune.training.recipe import train

# (dataset, LoRA optimizer steps); MedMCQA gets fewer: a 135M model lacks the medical knowledge.
DEMO_PLAN = (("arc_easy", 200), ("medmcqa", 100))
QUICK_PLAN = (("arc_easy", 4), ("medmcqa", 4))


def _row(dataset: str, setup: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "setup": setup,
        "scoring": metrics["scoring"],
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "ci95": metrics["ci95"],
        "majority_baseline": metrics["majority_baseline"],
        "predicted_letters": metrics["predicted_letter_distribution"],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'dataset':<9} {'setup':<22} {'acc':>6} {'95% CI':>13} {'majority':>9}  predicted letters"
    lines = [header, "-" * len(header)]
    for r in rows:
        low, high = r["ci95"]
        lines.append(
            f"{r['dataset']:<9} {r['setup']:<22} {r['accuracy'] * 100:5.1f}% "
            f"{low * 100:5.1f}-{high * 100:5.1f}% {r['majority_baseline'] * 100:8.1f}%  "
            f"{format_distribution(r['predicted_letters'])}"
        )
    return "\n".join(lines)


def run_demo(output: Path, quick: bool = False) -> int:
    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    plan = QUICK_PLAN if quick else DEMO_PLAN
    limit = 16 if quick else None
    resolved = resolve_model(None)
    tokenizer = load_tokenizer(resolved)
    base = load_model(resolved)
    encoder = PromptEncoder(tokenizer)
    precision = resolve_precision("auto", torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    for dataset, steps in plan:
        validation = load_examples(bundled_path(dataset, "validation"), limit=limit).examples
        for scoring in ("letter", "cloze"):
            print(
                f"[{dataset}] zero-shot, {scoring} scoring on {len(validation)} validation rows...",
                flush=True,
            )
            scored = score_examples(base, encoder, validation, scoring, precision=precision)
            rows.append(_row(dataset, f"zero-shot ({scoring})", compute_metrics(scored)))
        print(f"[{dataset}] LoRA, {steps} steps...", flush=True)
        config = build_config(
            {
                "method": "lora",
                "train": dataset,
                "validation": dataset,
                "output": str(output / f"lora-{dataset}"),
                "max_steps": steps,
                "eval_steps": max(steps // 2, 1),
                # the zero-shot row above is the curve's start: no step-0 check
                "validate_at_start": False,
                # --quick: checks on the final rows, so the final evaluation takes the kept check's scores
                "eval_limit": limit if quick else 200,
                "final_eval_limit": limit,
                "train_limit": 32 if quick else None,
                "batch_size": 4 if quick else None,  # --quick: a smoke run (None: the default)
            }
        )
        result = train(config, show_progress=True, overwrite=True)  # the demo re-runs from scratch
        validation_metrics = result.metrics["validation"]
        rows.append(_row(dataset, f"LoRA {result.metrics['objective']} {steps} st", validation_metrics))
    table = format_table(rows)
    elapsed = time.perf_counter() - start
    print("\n" + table)
    print(f"\n(demo took {elapsed / 60:.1f} min; runs and metrics in {output})")
    atomic_write_json(output / "demo_results.json", {"rows": rows, "seconds": round(elapsed, 1)})
    atomic_write_text(output / "demo_table.txt", table + "\n")
    return 0
