"""How sure a comparison is: paired tests on the same questions, and mean +- spread over seeds.

Two methods scored on the same questions are *paired*: most questions are answered right (or wrong) by
both, and only the questions on which they disagree carry evidence about which is better. Comparing
their two Wilson intervals ignores that pairing and is far too conservative; McNemar's exact test and a
paired bootstrap of the accuracy difference use it. Everything here is numpy in, numbers out.

McNemar's exact test is the two-sided binomial test of the discordant pairs against p = 1/2, written
with :func:`math.comb` rather than adding scipy as a dependency for one formula (docs/DECISIONS.md).

With several seeds, run k of one method is paired with run k of the other on the same questions:
McNemar counts every such pair, and the bootstrap resamples *questions* with all their seeds together
(a question answered by S runs is still one question), so its interval does not shrink with seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIGNIFICANCE_LEVEL = 0.05
BOOTSTRAP_SAMPLES = 10_000


@dataclass(frozen=True)
class PairedComparison:
    """Method ``a`` against method ``b`` on the same ``n`` questions (``runs`` pairs of runs each)."""

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a_correct: int  # questions a answers right and b wrong
    only_b_correct: int
    mcnemar_p: float
    difference: float  # accuracy_a - accuracy_b
    difference_ci: tuple[float, float]  # paired bootstrap, 95%
    runs: int = 1  # seeds: pairs of runs on the same questions

    @property
    def significant(self) -> bool:
        return self.mcnemar_p < SIGNIFICANCE_LEVEL

    def to_dict(self) -> dict[str, float | int | bool | list[float]]:
        return {
            "n": self.n,
            "runs": self.runs,
            "accuracy_a": round(self.accuracy_a, 4),
            "accuracy_b": round(self.accuracy_b, 4),
            "only_a_correct": self.only_a_correct,
            "only_b_correct": self.only_b_correct,
            "mcnemar_p": round(self.mcnemar_p, 6),
            "difference": round(self.difference, 4),
            "difference_ci95": [round(x, 4) for x in self.difference_ci],
            "significant": self.significant,
        }


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (1.0 when there are none)."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap_ci(
    correct_a: np.ndarray, correct_b: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of accuracy(a) - accuracy(b), resampling questions (pairs kept together);
    ``(runs, questions)`` matrices resample questions with every run's answer to them."""
    diff = np.atleast_2d(correct_a).astype(np.float64).mean(axis=0) - np.atleast_2d(correct_b).astype(
        np.float64
    ).mean(axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare_paired(
    correct_a: Sequence[bool], correct_b: Sequence[bool], *, seed: int = 0
) -> PairedComparison:
    """McNemar's exact test and a paired bootstrap for two per-question correctness vectors, or two
    ``(runs, questions)`` matrices (one row per seed; a single run, such as zero-shot, pairs with each)."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=bool))
    b = np.atleast_2d(np.asarray(correct_b, dtype=bool))
    same_runs = a.shape[0] == b.shape[0] or 1 in (a.shape[0], b.shape[0])
    if a.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0 or not same_runs:
        raise ValueError(f"need two equally long, non-empty correctness vectors, got {a.shape} and {b.shape}")
    a, b = np.broadcast_arrays(a, b)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    return PairedComparison(
        n=a.shape[1],
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        only_a_correct=only_a,
        only_b_correct=only_b,
        mcnemar_p=mcnemar_exact(only_a, only_b),
        difference=float(a.mean() - b.mean()),
        difference_ci=paired_bootstrap_ci(a, b, seed=seed),
        runs=a.shape[0],
    )


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (spread 0.0 for a single seed)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values")
    spread = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), spread


def verdict(name_a: str, name_b: str, result: PairedComparison) -> str:
    """One plain sentence a reader can act on."""
    diff = result.difference * 100
    low, high = (x * 100 for x in result.difference_ci)
    evidence = (
        f"{result.only_a_correct} questions only {name_a} answers right, {result.only_b_correct} only "
        f"{name_b}; McNemar p = {result.mcnemar_p:.3g}, difference {diff:+.1f} pts "
        f"(95% CI {low:+.1f} to {high:+.1f})"
    )
    if result.significant:
        better, worse = (name_a, name_b) if diff > 0 else (name_b, name_a)
        return f"{better} is better than {worse} at the 5% level ({evidence})."
    return f"{name_a} and {name_b} are not distinguishable at the 5% level ({evidence})."
