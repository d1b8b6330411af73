"""Metrics that expose letter bias, and batched scoring that is batch-size invariant."""

from __future__ import annotations

import numpy as np
import pytest

from mcqtune.data import MCQExample
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.format import format_metrics
from mcqtune.evaluation.metrics import ScoredExamples, compute_metrics, wilson_interval
from mcqtune.prompt import PromptEncoder


def test_wilson_interval_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4)
    assert high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_metrics_report_baseline_distribution_and_subjects():
    examples = [
        MCQExample(str(i), "q", ("a", "b", "c", "d"), answer, subject)
        for i, (answer, subject) in enumerate([(0, "x"), (0, "x"), (0, "y"), (1, "y"), (2, "y")])
    ]
    # The "model" always answers A: it scores 60%, exactly the majority baseline.
    scores = np.tile(np.array([[0.0, -1.0, -2.0, -3.0]]), (5, 1))
    metrics = compute_metrics(ScoredExamples(examples, scores, "letter", [], 1.0))
    assert metrics["accuracy"] == 0.6
    assert metrics["majority_baseline"] == 0.6
    assert metrics["majority_letter"] == "A"
    assert metrics["predicted_letter_distribution"] == {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}
    assert metrics["gold_letter_distribution"] == {"A": 0.6, "B": 0.2, "C": 0.2, "D": 0.0}
    assert metrics["per_subject"] == {"x": {"n": 2, "accuracy": 1.0}, "y": {"n": 3, "accuracy": 0.3333}}
    low, high = metrics["ci95"]
    assert low < 0.6 < high
    text = format_metrics(metrics)
    assert "majority-letter baseline 60.0%" in text and "A:100%" in text


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_scores_do_not_depend_on_batch_size(tiny_model, tokenizer, arc_examples, scoring):
    encoder = PromptEncoder(tokenizer)
    rows = arc_examples[:10]
    one = score_examples(tiny_model, encoder, rows, scoring, batch_size=1)
    many = score_examples(tiny_model, encoder, rows, scoring, batch_size=8)
    assert one.scores.shape == (10, 4)
    assert np.isfinite(one.scores).all()
    np.testing.assert_allclose(one.scores, many.scores, atol=1e-4)
    probs = many.probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_mixed_option_counts_are_masked(tiny_model, tokenizer):
    rows = [
        MCQExample("two", "Is water wet?", ("yes", "no"), 0),
        MCQExample("five", "Pick a number.", ("one", "two", "three", "four", "five"), 4),
    ]
    scored = score_examples(tiny_model, PromptEncoder(tokenizer), rows, "cloze", batch_size=2)
    assert np.isinf(scored.scores[0, 2:]).all()
    assert np.isfinite(scored.scores[1]).all()
    assert scored.predictions[0] in (0, 1)
