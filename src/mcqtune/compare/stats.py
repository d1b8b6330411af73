"""How sure a comparison is: paired tests on the same questions, and mean +- spread over seeds.

Two methods scored on the same questions are *paired*: most questions are answered right (or wrong) by
both, and only the questions on which they disagree carry evidence about which is better. Comparing
their two Wilson intervals ignores that pairing and is far too conservative; McNemar's exact test and a
paired bootstrap of the accuracy difference use it. Everything here is numpy in, numbers out.

McNemar's exact test is the two-sided binomial test of the discordant questions against p = 1/2, written
with :func:`math.comb` rather than adding scipy as a dependency for one formula (docs/DECISIONS.md).

With several seeds, run k of one method is paired with run k of the other on the same questions, and a
question is still one question: its evidence is the mean, over the run pairs, of (a right) - (b right).
Counting every run pair as its own question would let a second seed of identical answers halve the
p-value. So the test is the paired sign-flip (randomization) test of those per-question differences:
under "no difference" each question's difference is as likely negated. With one run (or whenever every
difference is -1, 0 or +1) its exact distribution is McNemar's, used as such; otherwise it is sampled.
The bootstrap likewise resamples questions with all their runs.

Each method is tested against the best one, so a table of K methods makes K-1 tests: :func:`holm_adjust`
(Holm's step-down correction) keeps the chance of any false "significant" in the family at 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIGNIFICANCE_LEVEL = 0.05
BOOTSTRAP_SAMPLES = 10_000
SIGN_FLIP_SAMPLES = 20_000


@dataclass(frozen=True)
class PairedComparison:
    """Method ``a`` against method ``b`` on the same ``n`` questions (``runs`` pairs of runs each)."""

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a_correct: int  # questions a answers right more often than b (one run: right, and b wrong)
    only_b_correct: int
    p_value: float  # two-sided, this test alone (McNemar exact, or sign-flip over questions)
    difference: float  # accuracy_a - accuracy_b
    difference_ci: tuple[float, float]  # paired bootstrap, 95%
    runs: int = 1  # seeds: pairs of runs on the same questions
    test: str = "McNemar exact"

    @property
    def significant(self) -> bool:
        """At 5% for this test alone; a table of several tests uses :func:`holm_adjust` instead."""
        return self.p_value < SIGNIFICANCE_LEVEL

    def to_dict(self) -> dict[str, float | int | bool | str | list[float]]:
        return {
            "n": self.n,
            "runs": self.runs,
            "accuracy_a": round(self.accuracy_a, 4),
            "accuracy_b": round(self.accuracy_b, 4),
            "only_a_correct": self.only_a_correct,
            "only_b_correct": self.only_b_correct,
            "test": self.test,
            "p_value": round(self.p_value, 6),
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


def sign_flip_is_exact(differences: np.ndarray) -> bool:
    """Whether every per-question difference is -1, 0 or +1: the sign-flip test is then McNemar's."""
    return bool(np.all(np.isin(np.asarray(differences, dtype=np.float64), (-1.0, 0.0, 1.0))))


def sign_flip_p(differences: np.ndarray, *, samples: int = SIGN_FLIP_SAMPLES, seed: int = 0) -> float:
    """Two-sided paired sign-flip test of per-question differences in [-1, 1] (mean over run pairs of
    a right minus b right): exact (McNemar) when every difference is -1, 0 or +1, else sampled
    (``samples`` random sign patterns, the observed one counted in: never 0)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    if sign_flip_is_exact(d):
        return mcnemar_exact(int((d > 0).sum()), int((d < 0).sum()))
    observed = abs(d.sum()) - 1e-9  # float sums: an equal null sum counts as "as extreme"
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, samples, 2_000):  # 2,000 sign patterns at a time: bounded memory
        signs = rng.integers(0, 2, size=(min(2_000, samples - start), d.size)) * 2.0 - 1.0
        extreme += int((np.abs(signs @ d) >= observed).sum())
    return (extreme + 1) / (samples + 1)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: a test is significant at 5% in the family
    when its adjusted p is below 0.05 (the chance of any false positive among them stays <= 5%)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare_paired(
    correct_a: Sequence[bool], correct_b: Sequence[bool], *, seed: int = 0
) -> PairedComparison:
    """The paired test and a paired bootstrap for two per-question correctness vectors, or two
    ``(runs, questions)`` matrices (one row per seed; a single run, such as zero-shot, pairs with each)."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=bool))
    b = np.atleast_2d(np.asarray(correct_b, dtype=bool))
    same_runs = a.shape[0] == b.shape[0] or 1 in (a.shape[0], b.shape[0])
    if a.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0 or not same_runs:
        raise ValueError(f"need two equally long, non-empty correctness vectors, got {a.shape} and {b.shape}")
    a, b = np.broadcast_arrays(a, b)
    per_question = a.mean(axis=0) - b.mean(axis=0)  # in [-1, 1]: one number per question
    return PairedComparison(
        n=a.shape[1],
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        only_a_correct=int((per_question > 0).sum()),
        only_b_correct=int((per_question < 0).sum()),
        p_value=sign_flip_p(per_question, seed=seed),
        difference=float(a.mean() - b.mean()),
        difference_ci=paired_bootstrap_ci(a, b, seed=seed),
        runs=a.shape[0],
        test="McNemar exact" if sign_flip_is_exact(per_question) else "paired sign-flip over questions",
    )


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (spread 0.0 for a single seed)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values")
    spread = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), spread


def verdict(name_a: str, name_b: str, result: PairedComparison, p_adjusted: float | None = None) -> str:
    """One plain sentence a reader can act on; ``p_adjusted`` (Holm, in a table of several tests)
    decides significance when given."""
    diff = result.difference * 100
    low, high = (x * 100 for x in result.difference_ci)
    only_a, only_b = result.only_a_correct, result.only_b_correct
    if result.runs == 1:
        counts = f"{only_a} questions only {name_a} answers right, {only_b} only {name_b}"
    else:
        pairs = f"in more of the {result.runs} run pairs"
        counts = f"{only_a} questions {name_a} answers right {pairs}, {only_b} {name_b} does"
    p = f"p = {result.p_value:.3g}" + ("" if p_adjusted is None else f", Holm-adjusted {p_adjusted:.3g}")
    evidence = f"{counts}; {result.test} {p}, difference {diff:+.1f} pts (95% CI {low:+.1f} to {high:+.1f})"
    significant = result.significant if p_adjusted is None else p_adjusted < SIGNIFICANCE_LEVEL
    if significant:
        better, worse = (name_a, name_b) if diff > 0 else (name_b, name_a)
        return f"{better} is better than {worse} at the 5% level ({evidence})."
    return f"{name_a} and {name_b} are not distinguishable at the 5% level ({evidence})."
