"""The model-running analyses behind ``eval``/``predict``: option-order robustness and debiasing.

- :func:`score_permutations`: every question is scored under several orders of its options (cyclic
  rotations, all orders, or K random ones) in **one** batched
  :func:`~mcqtune.evaluation.evaluate.score_examples` call and un-permuted back to the original options;
  :func:`~mcqtune.evaluation.metrics.permutation_summary` turns that into numbers.
- :func:`run_analyses`: score once, then add the permutation summary and/or content-free debiasing with
  a prior given or estimated here (the math: :mod:`mcqtune.evaluation.debias`).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcqtune.data import MCQExample
from mcqtune.errors import ConfigError
from mcqtune.evaluation.debias import LetterPrior, debias, debias_permuted, debias_summary, estimate_prior
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.metrics import PERMUTATION_MODES, PermutedScores, ScoredExamples, permutation_summary
from mcqtune.progress import task

MAX_ALL_PERMUTATIONS = 720  # 6 options; "all" beyond that is a typo, not a plan


# ------------------------------------------------------------------------------------ permutations


def parse_permutations(spec: str | int) -> str | int:
    """``cyclic``, ``all`` or a count K >= 2 of orders (the original plus K-1 random ones)."""
    if isinstance(spec, int):
        value = spec
    else:
        text = str(spec).strip().lower()
        if text in PERMUTATION_MODES:
            return text
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"--permutations must be cyclic, all or a number >= 2, got '{spec}'") from None
    if value < 2:
        raise ConfigError(f"--permutations K needs K >= 2 (the original order plus K-1), got {value}")
    return value


def option_permutations(n_options: int, mode: str | int, seed: int = 0) -> list[tuple[int, ...]]:
    """Option orders for questions with ``n_options`` options; the identity always comes first.

    An order ``perm`` shows original option ``perm[j]`` at position j. ``cyclic`` gives the n
    rotations (each option visits each letter once), ``all`` every order, an integer K the identity
    plus K-1 distinct random orders (all of them if K >= n!). The same orders are used for every
    question with the same option count, so per-order accuracy is meaningful.
    """
    identity = tuple(range(n_options))
    if mode == "cyclic":
        return [tuple((j + r) % n_options for j in range(n_options)) for r in range(n_options)]
    total = math.factorial(n_options)
    if mode == "all":
        if total > MAX_ALL_PERMUTATIONS:
            raise ConfigError(
                f"--permutations all would score {total} orders of {n_options} options; use a number"
            )
        return list(itertools.permutations(range(n_options)))
    if not isinstance(mode, int):
        raise ConfigError(f"unknown permutation mode '{mode}'")
    if mode >= total:
        return list(itertools.permutations(range(n_options)))
    rng = random.Random(f"mcqtune-permutations-{seed}-{n_options}")
    chosen = [identity]
    seen = {identity}
    while len(chosen) < mode:
        perm = list(range(n_options))
        rng.shuffle(perm)
        key = tuple(perm)
        if key not in seen:
            seen.add(key)
            chosen.append(key)
    return chosen


def score_permutations(
    model: Any,
    encoder: Any,
    examples: list[MCQExample],
    scoring: str,
    mode: str | int = "cyclic",
    *,
    seed: int = 0,
    **score_kwargs: Any,
) -> PermutedScores:
    """Score every question under every order of ``mode`` in one batched ``score_examples`` call.

    ``score_kwargs`` go to :func:`~mcqtune.evaluation.evaluate.score_examples` (batch_size, packed, precision,
    device). A question is kept only if every one of its orders fits ``max_length``.
    """
    mode = parse_permutations(mode)
    start = time.perf_counter()
    cache: dict[int, list[tuple[int, ...]]] = {}
    flat: list[MCQExample] = []
    owners: list[tuple[int, int]] = []
    perms_per_question: list[list[tuple[int, ...]]] = []
    for q, example in enumerate(examples):
        k = len(example.choices)
        if k not in cache:
            cache[k] = option_permutations(k, mode, seed)
        perms_per_question.append(cache[k])
        for p, perm in enumerate(cache[k]):
            flat.append(example.permuted(perm))
            owners.append((q, p))
    scored = score_examples(model, encoder, flat, scoring, **score_kwargs)
    flat_kept = np.ones(len(flat), dtype=bool)
    for index, _ in scored.skipped:
        flat_kept[index] = False
    n_options = max(len(e.choices) for e in examples)
    n_orders = max(len(p) for p in perms_per_question)
    scores = np.full((len(examples), n_orders, n_options), np.nan)
    question_ok = np.ones(len(examples), dtype=bool)
    reasons: dict[int, str] = {}
    for index, reason in scored.skipped:
        q = owners[index][0]
        question_ok[q] = False
        reasons.setdefault(q, reason)
    rows = iter(scored.scores)
    for index, (q, p) in enumerate(owners):
        if not flat_kept[index]:
            continue
        row = next(rows)
        perm = perms_per_question[q][p]
        k = len(perm)
        scores[q, p, :] = -np.inf
        scores[q, p, list(perm)] = row[:k]
    kept = [q for q in range(len(examples)) if question_ok[q]]
    return PermutedScores(
        examples=[examples[q] for q in kept],
        permutations=[perms_per_question[q] for q in kept],
        scores=scores[kept],
        scoring=scoring,
        mode=mode,
        skipped=sorted(reasons.items()),
        seconds=time.perf_counter() - start,
        kept_indices=kept,
    )


# ------------------------------------------------------------------------------------ debiasing


def calibration_sample(n_rows: int, size: int | None, seed: int) -> list[int]:
    """Row indices of a seeded random calibration sample (all rows when ``size`` >= n_rows)."""
    if size is None or size >= n_rows:
        return list(range(n_rows))
    if size < 1:
        raise ConfigError(f"--calibration-size must be >= 1, got {size}")
    return sorted(random.Random(f"mcqtune-calibration-{seed}").sample(range(n_rows), size))


# ------------------------------------------------------------------------------------ one entry point


@dataclass
class AnalysisResult:
    """What ``eval``/``predict`` need: original-order scores plus the optional analyses."""

    scored: ScoredExamples | None  # original option order
    permuted: PermutedScores | None = None
    prior: LetterPrior | None = None
    debiased: ScoredExamples | None = None  # the prior removed
    sections: dict[str, Any] = field(default_factory=dict)  # extra metrics: permutations, debias
    temperature: float | None = None  # the artifact's calibration temperature (evaluation/temperature.py)
    warnings: list[str] = field(default_factory=list)


def run_analyses(
    model: Any,
    encoder: Any,
    examples: list[MCQExample],
    scoring: str,
    *,
    permutations: str | int | None = None,
    debias_prior: bool = False,
    prior: LetterPrior | None = None,
    calibration_examples: list[MCQExample] | None = None,
    calibration_size: int | None = 100,
    calibration_source: str | None = None,
    seed: int = 0,
    model_id: str | None = None,
    adapter: str | None = None,
    **score_kwargs: Any,
) -> AnalysisResult:
    """Score ``examples`` once (all orders in one batched call when ``permutations`` is set) and add
    the permutation summary and/or debiasing (with ``prior``, or one estimated here).

    The prior is estimated from cyclic orders of ``calibration_size`` rows sampled (seeded) from
    ``calibration_examples``, or from ``examples`` themselves when that is None (labels are never
    used, so this is legitimate on the evaluated rows; the summary also reports the rows outside the
    sample). With ``permutations`` cyclic/all on the evaluated rows, those scores are reused.
    """
    result = AnalysisResult(scored=None)
    if permutations is not None:
        result.permuted = score_permutations(
            model, encoder, examples, scoring, permutations, seed=seed, **score_kwargs
        )
        result.scored = result.permuted.original()
        result.sections["permutations"] = permutation_summary(result.permuted)
    else:
        result.scored = score_examples(model, encoder, examples, scoring, **score_kwargs)
    if not (debias_prior or prior is not None):
        return result
    calibration_rows: list[int] | None = None
    if prior is None:
        if calibration_examples is None:
            calibration_rows = calibration_sample(len(result.scored.examples), calibration_size, seed)
            if result.permuted is not None and result.permuted.mode in PERMUTATION_MODES:
                calibration = result.permuted.subset(calibration_rows)
            else:
                rows = [result.scored.examples[r] for r in calibration_rows]
                with task("debias calibration"):
                    calibration = score_permutations(model, encoder, rows, scoring, "cyclic", **score_kwargs)
            source = calibration_source or f"{len(calibration_rows)} of the evaluated rows, seed {seed}"
        else:
            picked = calibration_sample(len(calibration_examples), calibration_size, seed)
            rows = [calibration_examples[r] for r in picked]
            with task("debias calibration"):
                calibration = score_permutations(model, encoder, rows, scoring, "cyclic", **score_kwargs)
            source = calibration_source or "calibration data"
        prior = estimate_prior(calibration, model=model_id, adapter=adapter, source=source)
    else:
        result.warnings += prior.check(scoring, model_id, adapter)
    result.prior = prior
    result.debiased = debias(result.scored, prior)
    missing = sum(prior.log_prior(len(e.choices)) is None for e in result.scored.examples)
    if missing:
        result.warnings.append(f"{missing} questions have an option count with no prior; left as they were")
    summary = debias_summary(result.scored, result.debiased, prior, calibration_rows)
    if result.permuted is not None:
        summary["permutations_after"] = permutation_summary(debias_permuted(result.permuted, prior))
    result.sections["debias"] = summary
    return result
