"""Removing the model's letter prior from its option scores (PriDe, Zheng et al. 2024, "Large Language
Models Are Not Robust Multiple Choice Selectors").

:class:`LetterPrior` is the model's content-free prior over answer *positions*, estimated without labels
from cyclically permuted scores (:func:`estimate_prior`) and removed from the option log-probabilities
(:func:`debias`, :func:`debias_scores`, :func:`debias_permuted`). A prior is a small JSON file, so
``eval`` can estimate it once and ``predict`` (or a server) can reuse it. :func:`debias_summary` says
what removing it changed (accuracy, letter bias, calibration), with the metrics of
:mod:`mcqtune.evaluation.metrics`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcqtune.data import LETTERS
from mcqtune.errors import PriorError
from mcqtune.evaluation.metrics import (
    PERMUTATION_MODES,
    PermutedScores,
    ScoredExamples,
    calibration,
    letter_bias,
    log_softmax,
    rounded,
)

PRIOR_FORMAT_VERSION = 1


@dataclass
class LetterPrior:
    """The model's content-free prior over answer positions, per option count (PriDe)."""

    priors: dict[int, list[float]]
    scoring: str
    n_calibration: dict[int, int]
    model: str | None = None
    adapter: str | None = None
    source: str | None = None

    def log_prior(self, n_options: int) -> np.ndarray | None:
        prior = self.priors.get(n_options)
        return None if prior is None else np.log(np.asarray(prior, dtype=float))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": PRIOR_FORMAT_VERSION,
            "kind": "mcqtune-letter-prior",
            "scoring": self.scoring,
            "model": self.model,
            "adapter": self.adapter,
            "source": self.source,
            "priors": {
                str(k): {LETTERS[i]: rounded(v, 6) for i, v in enumerate(p)}
                for k, p in sorted(self.priors.items())
            },
            "n_calibration": {str(k): v for k, v in sorted(self.n_calibration.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LetterPrior:
        if data.get("kind") != "mcqtune-letter-prior":
            raise PriorError("not a mcqtune letter prior (missing kind: mcqtune-letter-prior)")
        try:
            priors = {
                int(k): [float(v[LETTERS[i]]) for i in range(int(k))] for k, v in data["priors"].items()
            }
            counts = {int(k): int(v) for k, v in data.get("n_calibration", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorError(f"letter prior is malformed: {exc}") from None
        for k, p in priors.items():
            if any(not v > 0 for v in p):
                raise PriorError(f"letter prior for {k} options has a non-positive probability")
        return cls(
            priors=priors,
            scoring=data.get("scoring", "letter"),
            n_calibration=counts,
            model=data.get("model"),
            adapter=data.get("adapter"),
            source=data.get("source"),
        )

    def save(self, path: str | Path) -> None:
        from mcqtune.atomic import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LetterPrior:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PriorError(f"{path}: cannot read letter prior ({exc})") from None
        if not isinstance(data, dict):
            raise PriorError(f"{path}: not a mcqtune letter prior")
        try:
            return cls.from_dict(data)
        except PriorError as exc:
            raise PriorError(f"{path}: {exc}") from None

    def check(self, scoring: str, model: str | None = None, adapter: str | None = None) -> list[str]:
        """Raise if the scoring differs; return warnings if the model or adapter differ."""
        if scoring != self.scoring:
            raise PriorError(f"letter prior was estimated with {self.scoring} scoring, not {scoring}")
        warnings = []
        if model and self.model and model != self.model:
            warnings.append(f"letter prior was estimated on model {self.model}, not {model}")
        if (adapter or None) != (self.adapter or None):
            warnings.append(f"letter prior was estimated with adapter {self.adapter}, not {adapter}")
        return warnings

    def describe(self) -> str:
        parts = []
        for k, p in sorted(self.priors.items()):
            dist = " ".join(f"{LETTERS[i]}:{v * 100:.0f}%" for i, v in enumerate(p))
            parts.append(f"{dist} ({k} options, {self.n_calibration.get(k, 0)} questions)")
        return "; ".join(parts)


def estimate_prior(
    result: PermutedScores,
    *,
    model: str | None = None,
    adapter: str | None = None,
    source: str | None = None,
) -> LetterPrior:
    """PriDe's content-free prior from permuted scores of a calibration sample; uses no labels.

    For each question, the log-probability of each *position* is averaged over the orders (under
    cyclic orders every option sits at every position once, so the option content cancels) and
    softmax-normalised; the prior is the mean of these per-question priors, per option count.
    """
    if result.mode not in PERMUTATION_MODES:
        # Random orders do not put every option at every position equally often: content leaks in.
        raise PriorError("estimate the letter prior from cyclic or all orders (not random ones)")
    positions = result.positions()
    valid = result.valid
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for q, perms in enumerate(result.permutations):
        k = len(perms[0])
        mean_logp = positions[q, valid[q], :k].mean(axis=0)
        per_question = np.exp(mean_logp - mean_logp.max())
        per_question /= per_question.sum()
        sums[k] = sums.get(k, np.zeros(k)) + per_question
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        raise PriorError("no calibration question could be scored")
    priors = {k: (sums[k] / counts[k]).tolist() for k in sums}
    return LetterPrior(priors, result.scoring, counts, model=model, adapter=adapter, source=source)


def debias_scores(scores: np.ndarray, n_options: Sequence[int], prior: LetterPrior) -> tuple[np.ndarray, int]:
    """``log_softmax(scores) - log prior`` row by row; rows with no prior for their option count stay.

    Returns the new (N, K) scores (-inf kept for absent options) and how many rows had no prior.
    """
    logp = log_softmax(np.asarray(scores, dtype=float))
    out = logp.copy()
    missing = 0
    for row, k in enumerate(n_options):
        log_prior = prior.log_prior(int(k))
        if log_prior is None:
            missing += 1
            continue
        out[row, :k] = logp[row, :k] - log_prior
    return out, missing


def debias(scored: ScoredExamples, prior: LetterPrior) -> ScoredExamples:
    """A ScoredExamples with the prior removed from every question's scores."""
    scores, _ = debias_scores(scored.scores, [len(e.choices) for e in scored.examples], prior)
    return dataclasses.replace(scored, scores=scores)


def debias_permuted(result: PermutedScores, prior: LetterPrior) -> PermutedScores:
    """Remove the prior position by position from every order (for order-robustness after debiasing)."""
    logp = result.log_probs
    out = logp.copy()
    for q, perms in enumerate(result.permutations):
        for p, perm in enumerate(perms):
            log_prior = prior.log_prior(len(perm))
            if log_prior is None or not result.valid[q, p]:
                continue
            out[q, p, list(perm)] = logp[q, p, list(perm)] - log_prior
    return dataclasses.replace(result, scores=out)


def debias_summary(
    before: ScoredExamples,
    after: ScoredExamples,
    prior: LetterPrior,
    calibration_rows: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Accuracy and letter bias before vs after debiasing on the same rows.

    ``calibration_rows`` (indices into ``before.examples``) are the rows the prior was estimated on,
    if they are part of the evaluated set: the summary then also reports the rows outside it.
    """
    gold = [e.answer for e in before.examples]
    n_letters = before.scores.shape[1]
    pred_before = before.predictions
    pred_after = after.predictions
    summary: dict[str, Any] = {
        "prior": prior.to_dict()["priors"],
        "n_calibration": prior.n_calibration,
        "calibration_source": prior.source,
        "n": len(gold),
        "changed_predictions_share": rounded((pred_before != pred_after).mean()) if len(gold) else 0.0,
    }
    answered = np.array([g is not None for g in gold], dtype=bool)
    if not answered.any():
        return summary
    gold_arr = np.array([-1 if g is None else g for g in gold])

    def part(rows: np.ndarray) -> dict[str, Any]:
        result: dict[str, Any] = {"n": int(rows.sum())}
        for name, pred in (("before", pred_before), ("after", pred_after)):
            bias = letter_bias(gold_arr[rows], pred[rows], n_letters)
            probs = (before if name == "before" else after).probabilities[rows]
            cal = calibration(probs, gold_arr[rows].tolist())
            result[name] = {
                "accuracy": rounded((pred[rows] == gold_arr[rows]).mean()),
                "predicted_distribution": bias["predicted_distribution"],
                "tv_distance": bias.get("tv_distance"),
                "macro_recall": bias.get("macro_recall"),
                "ece": cal.get("ece"),
                "brier": cal.get("brier"),
            }
        return result

    summary["all_rows"] = part(answered)
    if calibration_rows is not None:
        outside = answered.copy()
        outside[list(calibration_rows)] = False
        if outside.any() and outside.sum() < answered.sum():
            summary["outside_calibration"] = part(outside)
    summary["after_letter_bias"] = letter_bias(gold_arr[answered], pred_after[answered], n_letters)
    summary["after_calibration"] = calibration(after.probabilities[answered], gold_arr[answered].tolist())
    return summary
