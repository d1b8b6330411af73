"""Pure evaluation metrics: scores in, numbers out (no model, no torch).

- :class:`ScoredExamples` / :class:`PermutedScores`: what scoring produced (per-question option scores,
  once or under several option orders, mapped back to the original options);
- :func:`compute_metrics`: accuracy with its Wilson interval beside the majority-letter baseline and the
  predicted-letter distribution (a model that "wins" by answering one letter has not won), per-subject
  accuracy, :func:`letter_bias` (per-letter precision/recall, confusion matrix, distribution distances)
  and :func:`calibration` (ECE over equal-width confidence bins, reliability bins, Brier score);
- :func:`permutation_summary`: accuracy averaged over option orders, "circular" accuracy (right under
  every order), the share of questions whose chosen option depends on the order, position bias.

Removing the model's letter prior from these scores (PriDe) is :mod:`mcqtune.evaluation.debias`.

The model-running side (scoring batches, scoring under permutations) is :mod:`mcqtune.evaluation.evaluate`
and :mod:`mcqtune.evaluation.analysis`; the printed text is :mod:`mcqtune.evaluation.format`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcqtune.data import LETTERS, MCQExample

PERMUTATION_MODES = ("cyclic", "all")  # orders that put every option at every position equally often
ECE_BINS = 10
KL_SMOOTHING = 0.5  # add-half counts so one empty letter does not make KL infinite


# ------------------------------------------------------------------------------------ scores


@dataclass
class ScoredExamples:
    """Per-question option scores (N, K_max; -inf where a question has fewer options)."""

    examples: list[MCQExample]
    scores: np.ndarray
    scoring: str
    skipped: list[tuple[int, str]]
    seconds: float

    @property
    def predictions(self) -> np.ndarray:
        return self.scores.argmax(axis=1)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax over each question's options (letter: renormalised letter probabilities)."""
        shifted = self.scores - self.scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)


def log_softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Log-softmax that keeps -inf (absent options) and NaN (absent orders) where they are."""
    with np.errstate(invalid="ignore", divide="ignore"):
        top = np.max(np.where(np.isnan(scores), -np.inf, scores), axis=axis, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        shifted = scores - top
        norm = np.log(np.nansum(np.exp(shifted), axis=axis, keepdims=True))
        return shifted - norm


@dataclass
class PermutedScores:
    """Scores of every question under several option orders, mapped back to the original options.

    ``scores[q, p, i]`` is the score of question q's *original* option i when shown in order
    ``permutations[q][p]``; NaN where question q has fewer orders than ``scores.shape[1]`` and -inf
    where it has fewer options. Order 0 is always the original order.
    """

    examples: list[MCQExample]
    permutations: list[list[tuple[int, ...]]]
    scores: np.ndarray
    scoring: str
    mode: str | int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    kept_indices: list[int] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        """(N, P) bool: question q was scored under order p."""
        return ~np.isnan(self.scores).any(axis=2)

    @property
    def log_probs(self) -> np.ndarray:
        """(N, P, K) log-softmax over each (question, order)'s options, in original option order."""
        return log_softmax(self.scores)

    @property
    def predictions(self) -> np.ndarray:
        """(N, P) predicted original option index; -1 for absent orders."""
        filled = np.where(np.isnan(self.scores), -np.inf, self.scores)
        out = filled.argmax(axis=2)
        out[~self.valid] = -1
        return out

    def positions(self, values: np.ndarray | None = None) -> np.ndarray:
        """(N, P, K) ``values`` (default log-probs) re-ordered by the *position* each option was shown at."""
        values = self.log_probs if values is None else values
        out = np.full_like(values, np.nan)
        for q, perms in enumerate(self.permutations):
            for p, perm in enumerate(perms):
                out[q, p, : len(perm)] = values[q, p, list(perm)]
        return out

    def original(self):
        """The original-order scores as a :class:`~mcqtune.evaluation.evaluate.ScoredExamples`."""
        return ScoredExamples(
            examples=list(self.examples),
            scores=self.scores[:, 0, :].copy(),
            scoring=self.scoring,
            skipped=list(self.skipped),
            seconds=self.seconds,
        )

    def subset(self, rows: Sequence[int]) -> PermutedScores:
        rows = list(rows)
        return dataclasses.replace(
            self,
            examples=[self.examples[r] for r in rows],
            permutations=[self.permutations[r] for r in rows],
            scores=self.scores[rows],
            kept_indices=[self.kept_indices[r] for r in rows] if self.kept_indices else [],
        )


# ------------------------------------------------------------------------------------ accuracy


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: well-behaved for small n and accuracies near 0 or 1."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _letter_shares(letters: list[str], n_letters: int) -> dict[str, float]:
    counts = Counter(letters)
    total = max(len(letters), 1)
    return {LETTERS[i]: round(counts.get(LETTERS[i], 0) / total, 4) for i in range(n_letters)}


def _answered(examples: list[MCQExample], predictions: np.ndarray) -> list[tuple[MCQExample, int]]:
    """The labelled questions with their predicted option index."""
    return [(e, int(p)) for e, p in zip(examples, predictions, strict=True) if e.answer is not None]


def compute_metrics(scored: ScoredExamples) -> dict[str, Any]:
    """Accuracy with CI, majority baseline, letter distributions and per-subject accuracy."""
    examples = scored.examples
    predictions = scored.predictions
    n = len(examples)
    n_letters = max((len(e.choices) for e in examples), default=0)
    pred_letters = [LETTERS[int(p)] for p in predictions]
    metrics: dict[str, Any] = {"scoring": scored.scoring, "n": n, "skipped": len(scored.skipped)}
    metrics["predicted_letter_distribution"] = _letter_shares(pred_letters, n_letters)
    answered = _answered(examples, predictions)
    if answered:
        correct = sum(e.answer == p for e, p in answered)
        gold_letters = [e.answer_letter for e, _ in answered]
        majority_letter, majority_count = Counter(gold_letters).most_common(1)[0]
        low, high = wilson_interval(correct, len(answered))
        metrics.update(
            accuracy=round(correct / len(answered), 4),
            correct=correct,
            ci95=[round(low, 4), round(high, 4)],
            majority_letter=majority_letter,
            majority_baseline=round(majority_count / len(answered), 4),
            gold_letter_distribution=_letter_shares(gold_letters, n_letters),
        )
        labelled = [i for i, e in enumerate(examples) if e.answer is not None]
        metrics["letter_bias"] = letter_bias(
            [e.answer for e, _ in answered], [p for _, p in answered], n_letters
        )
        metrics["calibration"] = calibration(
            scored.probabilities[labelled], [examples[i].answer for i in labelled]
        )
        subjects: dict[str, list[bool]] = {}
        for e, p in answered:
            if e.subject:
                subjects.setdefault(e.subject, []).append(e.answer == p)
        if subjects:
            metrics["per_subject"] = {
                s: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for s, v in sorted(subjects.items())
            }
    metrics["questions_per_second"] = round(n / scored.seconds, 2) if scored.seconds > 0 else None
    return metrics


PER_QUESTION = "per_question"  # the metrics key holding each question's id and whether it was right


def per_question(scored: ScoredExamples) -> dict[str, Any]:
    """Which labelled questions were answered right, by id in scoring order: what paired tests between two
    runs on the same questions need (``correct`` is a string of 0/1 to stay small in metrics.json)."""
    answered = _answered(scored.examples, scored.predictions)
    return {
        "ids": [e.id for e, _ in answered],
        "correct": "".join("1" if e.answer == p else "0" for e, p in answered),
    }


def correct_vector(metrics: dict[str, Any]) -> tuple[list[str], np.ndarray] | None:
    """The ids and boolean correctness saved by :func:`per_question`, or None when it was not saved."""
    saved = metrics.get(PER_QUESTION)
    if not saved:
        return None
    return saved["ids"], np.array([c == "1" for c in saved["correct"]], dtype=bool)


# ------------------------------------------------------------------------------------ letter bias


def rounded(value: float, digits: int = 4) -> float:
    """A plain float to ``digits`` places: what metrics.json stores (numpy scalars do not serialise)."""
    return round(float(value), digits)


def _distribution(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=float)


def distribution_distances(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Total variation and KL(predicted || gold) between two count (or probability) vectors.

    KL uses add-half smoothing of counts (on probabilities it is applied to 1000x the mass) so a letter
    that one side never uses gives a large but finite number.
    """
    predicted = np.asarray(predicted, dtype=float)
    gold = np.asarray(gold, dtype=float)
    p, q = _distribution(predicted), _distribution(gold)
    tv = 0.5 * np.abs(p - q).sum()
    scale_p = predicted.sum() if predicted.sum() > 1.5 else 1000.0
    scale_q = gold.sum() if gold.sum() > 1.5 else 1000.0
    ps = _distribution(p * scale_p + KL_SMOOTHING)
    qs = _distribution(q * scale_q + KL_SMOOTHING)
    kl = float((ps * np.log(ps / qs)).sum())
    return {"tv_distance": rounded(tv), "kl_divergence": rounded(kl)}


def letter_bias(
    gold: Sequence[int | None], predicted: Sequence[int], n_letters: int | None = None
) -> dict[str, Any]:
    """Per-letter precision/recall/F1, confusion matrix and letter-distribution distances.

    ``gold`` and ``predicted`` are 0-based option indices (letter positions); rows whose gold is
    ``None`` are ignored. ``confusion[g][p]`` counts questions with gold letter g answered p.
    """
    pairs = [(int(g), int(p)) for g, p in zip(gold, predicted, strict=True) if g is not None]
    if n_letters is None:
        n_letters = max((max(g, p) + 1 for g, p in pairs), default=0)
    letters = list(LETTERS[:n_letters])
    confusion = np.zeros((n_letters, n_letters), dtype=int)
    for g, p in pairs:
        confusion[g, p] += 1
    gold_counts = confusion.sum(axis=1)
    pred_counts = confusion.sum(axis=0)
    per_letter: dict[str, dict[str, Any]] = {}
    for i, letter in enumerate(letters):
        tp = int(confusion[i, i])
        precision = tp / pred_counts[i] if pred_counts[i] else None
        recall = tp / gold_counts[i] if gold_counts[i] else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        per_letter[letter] = {
            "precision": None if precision is None else rounded(precision),
            "recall": None if recall is None else rounded(recall),
            "f1": None if f1 is None else rounded(f1),
            "gold": int(gold_counts[i]),
            "predicted": int(pred_counts[i]),
        }
    n = len(pairs)
    result: dict[str, Any] = {
        "n": n,
        "letters": letters,
        "confusion": confusion.tolist(),
        "per_letter": per_letter,
        "gold_distribution": {
            k: rounded(v) for k, v in zip(letters, _distribution(gold_counts), strict=True)
        },
        "predicted_distribution": {
            k: rounded(v) for k, v in zip(letters, _distribution(pred_counts), strict=True)
        },
    }
    if n:
        result.update(distribution_distances(pred_counts, gold_counts))
        top = int(pred_counts.argmax())
        result["most_predicted"] = letters[top]
        result["most_predicted_share"] = rounded(pred_counts[top] / n)
        recalls = [v["recall"] for v in per_letter.values() if v["recall"] is not None]
        result["macro_recall"] = rounded(np.mean(recalls)) if recalls else None
    return result


# ------------------------------------------------------------------------------------ calibration


def calibration(
    probabilities: np.ndarray, answers: Sequence[int | None], n_bins: int = ECE_BINS
) -> dict[str, Any]:
    """ECE over ``n_bins`` equal-width confidence bins, the bins themselves, and the Brier score.

    Confidence is the probability of the predicted option. ECE = sum_b |acc_b - conf_b| * n_b / n.
    Brier is the multi-class form mean_i sum_k (p_ik - y_ik)^2 (0 best, 2 worst).
    """
    probabilities = np.asarray(probabilities, dtype=float)
    keep = np.array([a is not None for a in answers], dtype=bool)
    if not keep.any():
        return {"n": 0}
    probs = np.nan_to_num(probabilities[keep], nan=0.0)
    gold = np.array([a for a in answers if a is not None], dtype=int)
    n = len(gold)
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(n), predicted]
    correct = (predicted == gold).astype(float)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), gold] = 1.0
    brier = float(((probs - onehot) ** 2).sum(axis=1).mean())
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds confidences in (edge_b, edge_b+1]; the first bin also holds 0.
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    mce = 0.0
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        entry: dict[str, Any] = {"lower": rounded(edges[b], 2), "upper": rounded(edges[b + 1], 2), "n": count}
        if count:
            acc = float(correct[members].mean())
            conf = float(confidence[members].mean())
            gap = abs(acc - conf)
            ece += gap * count / n
            mce = max(mce, gap)
            entry.update(accuracy=rounded(acc), confidence=rounded(conf))
        bins.append(entry)
    return {
        "n": n,
        "ece": rounded(ece),
        "mce": rounded(mce),
        "brier": rounded(brier),
        "mean_confidence": rounded(confidence.mean()),
        "accuracy": rounded(correct.mean()),
        "bins": bins,
    }


# ------------------------------------------------------------------------------------ permutations


def permutation_summary(result: PermutedScores) -> dict[str, Any]:
    """Accuracy averaged over option orders, circular accuracy, order sensitivity, position bias.

    - ``accuracy_mean``: per question, the share of orders answered right, averaged over questions;
    - ``accuracy_circular``: share of questions answered right under every order;
    - ``answer_changes_share``: share of questions whose chosen option (by content) is not the same
      under all orders;
    - ``accuracy_ensemble``: argmax of the option log-probabilities averaged over orders;
    - ``position_bias``: predicted vs gold *letter* over all (question, order) pairs; under cyclic or
      all orders the gold letters are balanced, so any skew here is the model's positional prior.
    """
    valid = result.valid
    predictions = result.predictions
    n = len(result.examples)
    n_orders = valid.sum(axis=1)
    summary: dict[str, Any] = {
        "mode": result.mode,
        "n": n,
        "orders_per_question": int(n_orders.max()) if n else 0,
        "scored_prompts": int(valid.sum()),
        "skipped": len(result.skipped),
        "seconds": round(result.seconds, 2),
    }
    if not n:
        return summary
    changes = np.array(
        [len(set(predictions[q, valid[q]].tolist())) > 1 for q in range(n)],
        dtype=bool,
    )
    summary["answer_changes_share"] = rounded(changes.mean())
    # How much an option's log-probability moves with the order (0 for an order-invariant scorer).
    logp = np.where(valid[:, :, None], result.log_probs, np.nan)
    finite = np.isfinite(logp).any(axis=1)
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(logp, axis=1) - np.nanmin(logp, axis=1)
    spread = spread[finite & np.isfinite(spread)]
    summary["logprob_spread_max"] = float(f"{spread.max():.3g}") if spread.size else 0.0
    summary["logprob_spread_mean"] = float(f"{spread.mean():.3g}") if spread.size else 0.0
    mean_logp = np.nanmean(np.where(valid[:, :, None], result.log_probs, np.nan), axis=1)
    ensemble = np.where(np.isnan(mean_logp), -np.inf, mean_logp).argmax(axis=1)
    answered = np.array([e.answer is not None for e in result.examples], dtype=bool)
    if answered.any():
        gold = np.array([-1 if e.answer is None else e.answer for e in result.examples])
        correct = (predictions == gold[:, None]) & valid
        per_question = correct.sum(axis=1) / n_orders
        summary["accuracy_original"] = rounded(correct[answered, 0].mean())
        summary["accuracy_mean"] = rounded(per_question[answered].mean())
        summary["accuracy_circular"] = rounded((correct.sum(axis=1) == n_orders)[answered].mean())
        summary["accuracy_ensemble"] = rounded((ensemble == gold)[answered].mean())
        same_orders = len({tuple(p) for p in result.permutations}) == 1
        if same_orders:
            summary["accuracy_per_order"] = [
                rounded(correct[answered, p].mean()) for p in range(result.scores.shape[1])
            ]
            summary["orders"] = ["".join(LETTERS[i] for i in perm) for perm in result.permutations[0]]
        # Position bias: which letter is picked, against where the gold option was shown.
        n_letters = result.scores.shape[2]
        pred_pos, gold_pos = [], []
        for q in np.flatnonzero(answered):
            for p, perm in enumerate(result.permutations[q]):
                pred_pos.append(list(perm).index(int(predictions[q, p])))
                gold_pos.append(list(perm).index(int(gold[q])))
        bias = letter_bias(gold_pos, pred_pos, n_letters)
        summary["position_bias"] = {
            "predicted_distribution": bias["predicted_distribution"],
            "gold_distribution": bias["gold_distribution"],
            "tv_distance": bias["tv_distance"],
            "kl_divergence": bias["kl_divergence"],
        }
    return summary
