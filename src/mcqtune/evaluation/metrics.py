"""Pure evaluation metrics: scores in, numbers out (no model, no torch).

- :class:`ScoredExamples` / :class:`PermutedScores`: what scoring produced (per-question option scores,
  once or under several option orders, mapped back to the original options);
- :func:`compute_metrics`: accuracy with its Wilson interval beside the majority-letter baseline and the
  predicted-letter distribution (a model that "wins" by answering one letter has not won), per-subject
  accuracy, :func:`letter_bias` (per-letter precision/recall, confusion matrix, distribution distances)
  and :func:`calibration` (ECE over equal-width confidence bins, reliability bins, Brier score);
- :func:`permutation_summary`: accuracy averaged over option orders, "circular" accuracy (right under
  every order), the share of questions whose chosen option depends on the order, position bias;
- :class:`LetterPrior`, :func:`estimate_prior`, :func:`debias`: the model's content-free prior over
  answer *positions* (PriDe, Zheng et al. 2024, "Large Language Models Are Not Robust Multiple Choice
  Selectors"), estimated without labels from cyclically permuted scores and removed from the option
  log-probabilities. A prior is a small JSON file, so ``eval`` can estimate it once and ``predict`` (or
  a server) can reuse it.

The model-running side (scoring batches, scoring under permutations) is :mod:`mcqtune.evaluation.evaluate`
and :mod:`mcqtune.evaluation.analysis`; the printed text is :mod:`mcqtune.evaluation.format`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcqtune.data import LETTERS, MCQExample
from mcqtune.errors import PriorError

PERMUTATION_MODES = ("cyclic", "all")  # orders that put every option at every position equally often
ECE_BINS = 10
KL_SMOOTHING = 0.5  # add-half counts so one empty letter does not make KL infinite
PRIOR_FORMAT_VERSION = 1


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


def _log_softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
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
        return _log_softmax(self.scores)

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


def _round(value: float, digits: int = 4) -> float:
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
    return {"tv_distance": _round(tv), "kl_divergence": _round(kl)}


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
            "precision": None if precision is None else _round(precision),
            "recall": None if recall is None else _round(recall),
            "f1": None if f1 is None else _round(f1),
            "gold": int(gold_counts[i]),
            "predicted": int(pred_counts[i]),
        }
    n = len(pairs)
    result: dict[str, Any] = {
        "n": n,
        "letters": letters,
        "confusion": confusion.tolist(),
        "per_letter": per_letter,
        "gold_distribution": {k: _round(v) for k, v in zip(letters, _distribution(gold_counts), strict=True)},
        "predicted_distribution": {
            k: _round(v) for k, v in zip(letters, _distribution(pred_counts), strict=True)
        },
    }
    if n:
        result.update(distribution_distances(pred_counts, gold_counts))
        top = int(pred_counts.argmax())
        result["most_predicted"] = letters[top]
        result["most_predicted_share"] = _round(pred_counts[top] / n)
        recalls = [v["recall"] for v in per_letter.values() if v["recall"] is not None]
        result["macro_recall"] = _round(np.mean(recalls)) if recalls else None
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
        entry: dict[str, Any] = {"lower": _round(edges[b], 2), "upper": _round(edges[b + 1], 2), "n": count}
        if count:
            acc = float(correct[members].mean())
            conf = float(confidence[members].mean())
            gap = abs(acc - conf)
            ece += gap * count / n
            mce = max(mce, gap)
            entry.update(accuracy=_round(acc), confidence=_round(conf))
        bins.append(entry)
    return {
        "n": n,
        "ece": _round(ece),
        "mce": _round(mce),
        "brier": _round(brier),
        "mean_confidence": _round(confidence.mean()),
        "accuracy": _round(correct.mean()),
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
    summary["answer_changes_share"] = _round(changes.mean())
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
        summary["accuracy_original"] = _round(correct[answered, 0].mean())
        summary["accuracy_mean"] = _round(per_question[answered].mean())
        summary["accuracy_circular"] = _round((correct.sum(axis=1) == n_orders)[answered].mean())
        summary["accuracy_ensemble"] = _round((ensemble == gold)[answered].mean())
        same_orders = len({tuple(p) for p in result.permutations}) == 1
        if same_orders:
            summary["accuracy_per_order"] = [
                _round(correct[answered, p].mean()) for p in range(result.scores.shape[1])
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


# ------------------------------------------------------------------------------------ debiasing


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
                str(k): {LETTERS[i]: _round(v, 6) for i, v in enumerate(p)}
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
    logp = _log_softmax(np.asarray(scores, dtype=float))
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
        "changed_predictions_share": _round((pred_before != pred_after).mean()) if len(gold) else 0.0,
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
                "accuracy": _round((pred[rows] == gold_arr[rows]).mean()),
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
