"""One run's table row (a training run or the zero-shot evaluation) from its record and metrics.

:mod:`mcqtune.compare.evidence` folds these run rows into the table's method rows.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from mcqtune.artifacts import MANIFEST, METRICS
from mcqtune.compare.evidence import ANSWERS, IN_DOMAIN, ZERO_SHOT
from mcqtune.evaluation.metrics import PER_QUESTION


def _tv_distance(pred: dict[str, float], gold: dict[str, float]) -> float | None:
    if not pred or not gold:
        return None
    return round(0.5 * sum(abs(pred.get(k, 0.0) - gold.get(k, 0.0)) for k in set(pred) | set(gold)), 4)


def build_row(
    method: str, record: dict[str, Any], run_dir: Path, config_dict: dict[str, Any]
) -> dict[str, Any]:
    """One table row from a run's record and metrics (None where a number does not exist)."""
    row: dict[str, Any] = {
        "method": method,
        "status": record.get("status", "failed"),
        "error": record.get("error"),
        "objective": None,
        "scoring": None,
        "lr": None if method == ZERO_SHOT else config_dict.get("lr"),
        "n_eval": None,
        "accuracy": None,
        "ci95_low": None,
        "ci95_high": None,
        "majority_baseline": None,
        "accuracy_minus_baseline": None,
        "predicted_letter_distribution": None,
        "gold_letter_distribution": None,
        "letter_tv_distance": None,
        "permutation_accuracy": None,
        "trainable_params": 0 if method == ZERO_SHOT else None,
        "trainable_percent": 0.0 if method == ZERO_SHOT else None,
        "total_params": None,
        "artifact_bytes": 0 if method == ZERO_SHOT else None,
        "train_seconds": 0.0 if method == ZERO_SHOT else None,
        "train_tokens_per_second": None,
        "steps": 0 if method == ZERO_SHOT else None,
        "examples_seen": 0 if method == ZERO_SHOT else None,
        "best_step": None,
        "wall_seconds": record.get("wall_seconds"),
        "peak_memory_bytes": None,
        "peak_memory_kind": None,
        "eval_questions_per_second": None,
        "run_dir": str(run_dir),
        "learning_curve": [],
    }
    cuda = record.get("cuda_max_allocated_bytes")
    if cuda is not None:
        row["peak_memory_bytes"], row["peak_memory_kind"] = cuda, "cuda_max_allocated"
    elif record.get("peak_rss_bytes"):
        row["peak_memory_bytes"], row["peak_memory_kind"] = record["peak_rss_bytes"], "rss"
    metrics_path = run_dir / METRICS
    if row["status"] != "ok" or not metrics_path.is_file():
        return row
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    val = metrics.get("validation") or {}
    params = metrics.get("parameters") or {}
    train = metrics.get("train") or {}
    row.update(
        objective=metrics.get("objective"),
        scoring=val.get("scoring"),
        n_eval=val.get("n"),
        accuracy=val.get("accuracy"),
        majority_baseline=val.get("majority_baseline"),
        predicted_letter_distribution=val.get("predicted_letter_distribution"),
        gold_letter_distribution=val.get("gold_letter_distribution"),
        permutation_accuracy=(record.get("permutation") or {}).get("accuracy_mean"),
        eval_questions_per_second=val.get("questions_per_second"),
        trainable_params=params.get("trainable", row["trainable_params"]),
        trainable_percent=params.get("trainable_percent", row["trainable_percent"]),
        total_params=params.get("total"),
        artifact_bytes=metrics.get("artifact_bytes", row["artifact_bytes"]),
        data_sources=metrics.get("sources"),  # each source with its split and fingerprint
    )
    if val.get("ci95"):
        row["ci95_low"], row["ci95_high"] = val["ci95"]
    if row["permutation_accuracy"] is None and row["scoring"] == "cloze":
        # Cloze scores each option's text after the question alone: option order cannot change them.
        row["permutation_accuracy"] = row["accuracy"]
    if row["accuracy"] is not None and row["majority_baseline"] is not None:
        row["accuracy_minus_baseline"] = round(row["accuracy"] - row["majority_baseline"], 4)
    row["letter_tv_distance"] = _tv_distance(
        row["predicted_letter_distribution"] or {}, row["gold_letter_distribution"] or {}
    )
    if train:
        row.update(
            train_seconds=train.get("seconds"),
            train_tokens_per_second=train.get("tokens_per_second"),
            steps=train.get("steps"),
            examples_seen=train.get("examples_seen"),
        )
    manifest = run_dir / MANIFEST
    if manifest.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            row["best_step"] = saved.get("best_step")
            row["packed_options"] = saved.get("packing")
    row["learning_curve"] = [
        [h["step"], h["val_accuracy"]] for h in metrics.get("history", []) if "val_accuracy" in h
    ]
    row["seed"] = config_dict.get("seed")
    row["transfer"] = {}
    row[ANSWERS] = {IN_DOMAIN: val.get(PER_QUESTION)} if val.get(PER_QUESTION) else {}
    for name, scores in (record.get("transfer") or {}).items():
        low, high = scores["ci95"]
        baseline = scores["majority_baseline"]
        row["transfer"][name] = {
            "n_eval": scores["n"],
            "accuracy": scores["accuracy"],
            "ci95_low": low,
            "ci95_high": high,
            "majority_baseline": baseline,
            "source": scores.get("source"),
        }
        row[ANSWERS][name] = scores[PER_QUESTION]
    return row
