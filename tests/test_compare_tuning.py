"""The dev split never overlaps the validation rows; successive halving keeps the best candidate."""

from __future__ import annotations

import pytest

from mcqtune.compare.tuning import carve_dev_split, question_key, successive_halving
from mcqtune.data import MCQExample, bundled_path, load_examples


def test_dev_split_is_seeded_disjoint_and_never_touches_validation():
    train = load_examples(bundled_path("arc_easy", "train")).examples
    validation = load_examples(bundled_path("arc_easy", "validation")).examples
    # Plant validation questions into the training rows (re-cased, re-spaced, options reordered).
    planted = [
        MCQExample(f"dup{i}", "  " + v.question.upper() + " ", tuple(reversed(v.choices)), 0)
        for i, v in enumerate(validation[:30])
    ]
    rows = planted + list(train)
    split = carve_dev_split(rows, 100, seed=7, held_out=validation)
    assert len(split.dev) == 100 and len(split.train) == len(rows) - 100
    assert split.excluded_overlaps >= 30
    held = {question_key(v) for v in validation}
    assert not held & {question_key(e) for e in split.dev}
    assert not {id(e) for e in split.dev} & {id(e) for e in split.train}
    again = carve_dev_split(rows, 100, seed=7, held_out=validation)
    assert [e.id for e in again.dev] == [e.id for e in split.dev]
    other = carve_dev_split(rows, 100, seed=8, held_out=validation)
    assert [e.id for e in other.dev] != [e.id for e in split.dev]


def test_dev_split_too_large_is_an_error():
    rows = [MCQExample(str(i), f"q{i}", ("a", "b"), 0) for i in range(5)]
    with pytest.raises(ValueError, match="lower the dev size"):
        carve_dev_split(rows, 5, seed=0)


def test_successive_halving_prunes_and_picks_the_best():
    calls: list[tuple[float, int]] = []
    quality = {1e-5: 0.40, 1e-4: 0.55, 3e-4: 0.62, 1e-3: 0.50}

    def evaluate(lr: float, budget: int) -> float:
        calls.append((lr, budget))
        return quality[lr] + budget / 1000  # more budget helps everyone a little

    best, trials = successive_halving(list(quality), 10, 40, evaluate)
    assert best == 3e-4
    assert sorted(b for lr, b in calls if lr == 3e-4) == [10, 20, 40]
    assert [b for lr, b in calls if lr == 1e-5] == [10]  # pruned after the first rung
    assert len(calls) == 4 + 2 + 1
    assert trials[0].scores == {10: pytest.approx(0.41)}
