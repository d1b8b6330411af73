"""Temperature scaling: option probabilities a user can read as probabilities.

A softmax over option scores (letter log-probabilities, or cloze mean log-likelihoods) ranks the
options but is not a calibrated probability: the zero-shot model says "100.0%" for wrong answers.
Training fits one temperature T on its validation split (Guo et al. 2017, "On Calibration of Modern
Neural Networks"): ``p = softmax(scores / T)`` with T minimising the negative log-likelihood of the
gold options. T > 0 never changes the argmax, so accuracy is untouched. The artifact's manifest keeps
T (:data:`MANIFEST_KEY`); ``predict``, ``eval`` and ``serve`` apply it and say so
(:data:`CALIBRATED`), and say :data:`UNCALIBRATED` for the zero-shot model, for artifacts trained
before this existed, and for debiased scores (T was fitted on the scores before debiasing).

The ECE after scaling reported in metrics.json is cross-fitted (each fold's temperature is fitted on
the other folds), so it is not the in-sample number of a temperature fitted on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcqtune.evaluation.metrics import ScoredExamples, calibration

MANIFEST_KEY = "calibration"  # mcqtune.json: {"temperature": T, "fitted_on": ..., "n": ...}
METRICS_KEY = "temperature_scaling"  # metrics.json (under "validation") and eval's output
KIND_KEY = "probability_kind"  # predict records, /v1/answer: which kind of number "probabilities" holds
CALIBRATED = "calibrated"
UNCALIBRATED = "uncalibrated score"
FOLDS = 5  # cross-fitting folds for the honest ECE after scaling
MIN_QUESTIONS = 2  # fewer labelled questions fit no temperature
LOG_T_RANGE = (math.log(0.01), math.log(100.0))  # the search interval; an edge means "no signal"


def _gold_nll(scores: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the gold options under softmax(scores / T) (-inf: absent)."""
    scaled = scores / temperature
    top = scaled.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float((log_z - scaled[np.arange(len(gold)), gold]).mean())


def fit_temperature(scores: np.ndarray, gold: Sequence[int]) -> float:
    """The T in :data:`LOG_T_RANGE` minimising the gold options' NLL (golden-section search on log T;
    the NLL is convex in 1/T, so it has one minimum there)."""
    scores = np.asarray(scores, dtype=np.float64)
    gold_array = np.asarray(gold, dtype=int)
    low, high = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = _gold_nll(scores, gold_array, math.exp(a)), _gold_nll(scores, gold_array, math.exp(b))
    for _ in range(80):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = _gold_nll(scores, gold_array, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = _gold_nll(scores, gold_array, math.exp(b))
    return math.exp((low + high) / 2)


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``scores / temperature``; -inf (absent options) gets 0."""
    scaled = np.asarray(scores, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def option_probabilities(
    scores: np.ndarray, temperature: float | None, debiased: bool = False
) -> tuple[np.ndarray, str]:
    """The probabilities to show for option ``scores`` and what kind they are: calibrated with the
    artifact's temperature, or the plain softmax, an uncalibrated score (no temperature, or debiased
    scores, which the temperature was not fitted on)."""
    if temperature is None or debiased:
        return softmax(scores), UNCALIBRATED
    return softmax(scores, temperature), CALIBRATED


def _labelled(scored: ScoredExamples) -> tuple[np.ndarray, np.ndarray]:
    rows = [i for i, e in enumerate(scored.examples) if e.answer is not None]
    gold = np.array([scored.examples[i].answer for i in rows], dtype=int)
    return np.asarray(scored.scores, dtype=np.float64)[rows], gold


def temperature_summary(scored: ScoredExamples) -> dict[str, Any] | None:
    """Fit T on ``scored``'s labelled questions; ECE, Brier and NLL before, and after (every "after"
    cross-fitted over :data:`FOLDS` folds) for metrics.json. None when too few questions are labelled."""
    scores, gold = _labelled(scored)
    n = len(gold)
    if n < MIN_QUESTIONS:
        return None
    temperature = fit_temperature(scores, gold)
    folds = min(FOLDS, n)
    out_of_fold = np.zeros_like(scores)
    fold_of = np.arange(n) % folds
    for fold in range(folds):
        held, fit = fold_of == fold, fold_of != fold
        fold_t = fit_temperature(scores[fit], gold[fit]) if fit.sum() >= MIN_QUESTIONS else temperature
        out_of_fold[held] = softmax(scores[held], fold_t)
    before = calibration(softmax(scores), gold.tolist())
    after = calibration(out_of_fold, gold.tolist())
    at_edge = min(abs(math.log(temperature) - edge) for edge in LOG_T_RANGE) < 1e-3
    summary = {
        "temperature": round(temperature, 4),
        "n": n,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "brier_before": before["brier"],
        "brier_after": after["brier"],
        "nll_before": round(_gold_nll(scores, gold, 1.0), 4),
        "nll_after": round(float(-np.log(out_of_fold[np.arange(n), gold]).mean()), 4),
        "after_is": f"{folds}-fold cross-fitted (each fold scaled by a temperature fitted on the others)",
    }
    if at_edge:
        summary["warning"] = "the temperature is at the edge of its search range: the scores carry no signal"
    return summary


def manifest_entry(validation_metrics: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """What the artifact's manifest keeps from the final validation's temperature fit (None: no fit)."""
    summary = (validation_metrics or {}).get(METRICS_KEY)
    if not summary:
        return None
    return {"temperature": summary["temperature"], "fitted_on": source, "n": summary["n"]}


def manifest_temperature(manifest: dict[str, Any]) -> float | None:
    """The temperature an artifact's manifest carries, or None (trained before calibration was fitted)."""
    entry = manifest.get(MANIFEST_KEY) or {}
    value = entry.get("temperature")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def eval_section(scored: ScoredExamples, temperature: float | None) -> dict[str, Any]:
    """``eval``'s account of the probabilities of ``scored`` (its scores before any debiasing):
    calibrated with the artifact's temperature (and the calibration of the scaled probabilities on the
    evaluated rows), or uncalibrated scores."""
    _, kind = option_probabilities(scored.scores, temperature)
    section: dict[str, Any] = {KIND_KEY: kind}
    if kind == CALIBRATED:
        scores, gold = _labelled(scored)
        section["temperature"] = temperature
        if len(gold):
            section["calibration_after"] = calibration(softmax(scores, temperature), gold.tolist())
    else:
        section["note"] = (
            "a softmax over option scores, not calibrated probabilities (no temperature was fitted for "
            "this model: the zero-shot base, or an artifact trained before calibration was fitted)"
        )
    return section
