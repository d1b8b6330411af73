"""Paired tests give the known answers on constructed inputs (issue: a comparison a researcher trusts)."""

from __future__ import annotations

import numpy as np
import pytest

from mcqtune.compare.stats import (
    compare_paired,
    holm_adjust,
    mcnemar_exact,
    mean_and_spread,
    sign_flip_p,
    verdict,
)


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
    assert result.p_value == pytest.approx(mcnemar_exact(15, 5))
    assert result.p_value < 0.05 and result.significant  # p = 0.0414
    low, high = result.difference_ci
    assert 0 < low < 0.10 < high < 0.2
    assert "a is better than b at the 5% level" in verdict("a", "b", result)


def test_identical_methods_are_not_distinguishable():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.6
    result = compare_paired(a, a)
    assert result.p_value == 1.0 and not result.significant
    assert result.difference_ci == (0.0, 0.0)
    assert "not distinguishable" in verdict("lora", "ia3", result)


def test_same_accuracy_different_questions_is_not_significant():
    a = np.array([1, 0] * 50, dtype=bool)
    b = np.array([0, 1] * 50, dtype=bool)
    result = compare_paired(a, b)
    assert result.difference == 0 and result.p_value == 1.0
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


def test_seeds_pair_run_by_run_and_test_whole_questions():
    # Two seeds of each method on 100 questions: a-only 15 and b-only 5 in each seed, as above.
    a = np.array([1] * 60 + [0] * 20 + [1] * 15 + [0] * 5, dtype=bool)
    b = np.array([1] * 60 + [0] * 20 + [0] * 15 + [1] * 5, dtype=bool)
    one = compare_paired(a, b, seed=1)
    two = compare_paired(np.stack([a, a]), np.stack([b, b]), seed=1)
    assert (two.n, two.runs) == (100, 2)
    # The same answers in both seeds add no information about the questions: the question counts, the
    # p-value and the bootstrap interval (both over questions) equal the single run's. Counting each
    # run pair as a question would give McNemar(30, 10) = 0.0022 instead of 0.041.
    assert (two.only_a_correct, two.only_b_correct) == (15, 5)
    assert two.p_value == one.p_value == pytest.approx(mcnemar_exact(15, 5))
    assert two.difference_ci == one.difference_ci
    # A single run (zero-shot) pairs with every seed of the other.
    zero = compare_paired(b, np.stack([a, a]))
    assert (zero.runs, zero.only_a_correct, zero.only_b_correct) == (2, 5, 15)
    with pytest.raises(ValueError):
        compare_paired(np.stack([a, a, a]), np.stack([b, b]))


def test_seeds_that_disagree_use_the_sign_flip_test_over_questions():
    # 40 questions; a's two seeds both beat b on 10 and split (one right, one wrong) on 20, b always wrong
    # there: per-question differences 1 (x10) and 0.5 (x20). The exact sign-flip p-value: the
    # statistic |sum of signed differences| = 20 is reached only with every sign positive or every one
    # negative, so p = 2 / 2**30 (the sampled estimate is (extreme + 1) / (samples + 1): about 1/samples).
    b = np.zeros(40, dtype=bool)
    run1 = np.array([1] * 10 + [1, 0] * 10 + [0] * 10, dtype=bool)
    run2 = np.array([1] * 10 + [0, 1] * 10 + [0] * 10, dtype=bool)
    result = compare_paired(np.stack([run1, run2]), np.stack([b, b]), seed=0)
    assert result.test == "paired sign-flip over questions"
    assert (result.only_a_correct, result.only_b_correct) == (30, 0)
    assert result.p_value == pytest.approx(1 / 20_001) and result.significant
    # No effect: differences of both signs cancel, p near 1.
    balanced = np.array([0.5, -0.5] * 20)
    assert sign_flip_p(balanced, seed=0) > 0.9
    # One question ahead by half a run pair: the two sign patterns of one value, p = 1.
    assert sign_flip_p(np.array([0.5])) == pytest.approx(1.0)
    # A known tail: differences 1, 1, 1, 0.5 -> sum 3.5; |sum| >= 3.5 in 2 of the 16 patterns: p = 1/8.
    assert sign_flip_p(np.array([1, 1, 1, 0.5]), samples=200_000, seed=3) == pytest.approx(1 / 8, abs=0.005)


def test_holm_adjusts_in_step_down_order():
    # Sorted p: 0.01 (x3), 0.02 (x2 -> 0.04), 0.03 (x1); monotone, capped at 1, back in input order.
    assert holm_adjust([0.03, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.04, 0.5]) == pytest.approx([0.08, 0.5])
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []
    a = np.array([1] * 60 + [0] * 20 + [1] * 15 + [0] * 5, dtype=bool)
    b = np.array([1] * 60 + [0] * 20 + [0] * 15 + [1] * 5, dtype=bool)
    result = compare_paired(a, b)  # p = 0.041 alone, 0.083 if it were one of two tests
    assert "a is better than b" in verdict("a", "b", result)
    assert "not distinguishable" in verdict("a", "b", result, holm_adjust([result.p_value, 0.5])[0])
