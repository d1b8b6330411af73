"""Paired tests give the known answers on constructed inputs (issue: a comparison a researcher trusts)."""

from __future__ import annotations

import numpy as np
import pytest

from mcqtune.compare.stats import compare_paired, mcnemar_exact, mean_and_spread, verdict


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 0, 1.0),  # no disagreement: no evidence
        (5, 5, 1.0),
        (0, 10, 2 / 2**10),  # every disagreement goes one way: 2 * 0.5**10
        (2, 8, 2 * (1 + 10 + 45) / 2**10),  # 0.109375, the textbook exact value
        (8, 2, 2 * (1 + 10 + 45) / 2**10),  # symmetric
        (1, 0, 1.0),  # capped at 1
    ],
)
def test_mcnemar_exact_known_values(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_paired_comparison_counts_only_discordant_questions():
    # 100 questions: both right on 60, both wrong on 20, a-only 15, b-only 5.
    a = np.array([1] * 60 + [0] * 20 + [1] * 15 + [0] * 5, dtype=bool)
    b = np.array([1] * 60 + [0] * 20 + [0] * 15 + [1] * 5, dtype=bool)
    result = compare_paired(a, b, seed=1)
    assert (result.only_a_correct, result.only_b_correct) == (15, 5)
    assert result.accuracy_a == pytest.approx(0.75) and result.accuracy_b == pytest.approx(0.65)
    assert result.difference == pytest.approx(0.10)
    assert result.mcnemar_p == pytest.approx(mcnemar_exact(15, 5))
    assert result.mcnemar_p < 0.05 and result.significant  # p = 0.0414
    low, high = result.difference_ci
    assert 0 < low < 0.10 < high < 0.2
    assert "a is better than b at the 5% level" in verdict("a", "b", result)


def test_identical_methods_are_not_distinguishable():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.6
    result = compare_paired(a, a)
    assert result.mcnemar_p == 1.0 and not result.significant
    assert result.difference_ci == (0.0, 0.0)
    assert "not distinguishable" in verdict("lora", "ia3", result)


def test_same_accuracy_different_questions_is_not_significant():
    a = np.array([1, 0] * 50, dtype=bool)
    b = np.array([0, 1] * 50, dtype=bool)
    result = compare_paired(a, b)
    assert result.difference == 0 and result.mcnemar_p == 1.0
    low, high = result.difference_ci
    assert low < 0 < high


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError):
        compare_paired([True, False], [True])
    with pytest.raises(ValueError):
        compare_paired([], [])
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mean_and_spread_over_seeds():
    assert mean_and_spread([0.6]) == (0.6, 0.0)
    mean, spread = mean_and_spread([0.60, 0.64])
    assert mean == pytest.approx(0.62) and spread == pytest.approx(0.028284, rel=1e-4)


def test_seeds_pair_run_by_run_and_bootstrap_whole_questions():
    # Two seeds of each method on 100 questions: a-only 15 and b-only 5 in each seed, as above.
    a = np.array([1] * 60 + [0] * 20 + [1] * 15 + [0] * 5, dtype=bool)
    b = np.array([1] * 60 + [0] * 20 + [0] * 15 + [1] * 5, dtype=bool)
    two = compare_paired(np.stack([a, a]), np.stack([b, b]), seed=1)
    assert (two.n, two.runs) == (100, 2)
    assert (two.only_a_correct, two.only_b_correct) == (30, 10)  # McNemar counts every pair of runs
    assert two.mcnemar_p == pytest.approx(mcnemar_exact(30, 10))
    # The same answers in both seeds add no information about the questions: the bootstrap interval,
    # which resamples questions, equals the single-run one.
    assert two.difference_ci == compare_paired(a, b, seed=1).difference_ci
    # A single run (zero-shot) pairs with every seed of the other.
    zero = compare_paired(b, np.stack([a, a]))
    assert (zero.runs, zero.only_a_correct, zero.only_b_correct) == (2, 10, 30)
    with pytest.raises(ValueError):
        compare_paired(np.stack([a, a, a]), np.stack([b, b]))
