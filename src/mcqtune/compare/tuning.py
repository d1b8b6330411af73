"""Tuning a method's learning rate without touching the rows the final table is scored on.

A dev split is carved from the *training* data (seeded, its size reported) and any training row whose
question also appears among the held-out validation rows is kept out of it, so a tuned value can never
have been chosen on the questions it is later scored on. Trials are pruned by successive halving: every
candidate gets a small budget, the better half (1/``eta``) gets ``eta`` times more, until one is left.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mcqtune.data import MCQExample

Candidate = TypeVar("Candidate")


def question_key(example: MCQExample) -> tuple[str, tuple[str, ...]]:
    """Identity of a question for overlap checks: case- and whitespace-insensitive text and options."""

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    return norm(example.question), tuple(sorted(norm(c) for c in example.choices))


@dataclass(frozen=True)
class DevSplit:
    train: list[MCQExample]
    dev: list[MCQExample]
    seed: int
    excluded_overlaps: int  # training rows that repeat a held-out question (never put in dev)


def carve_dev_split(
    train: Sequence[MCQExample], size: int, seed: int, held_out: Iterable[MCQExample] = ()
) -> DevSplit:
    """``size`` seeded dev rows from ``train``, none of which repeats a ``held_out`` question."""
    if size <= 0:
        raise ValueError(f"dev split size must be positive, got {size}")
    held = {question_key(e) for e in held_out}
    eligible = [i for i, e in enumerate(train) if question_key(e) not in held]
    if size >= len(eligible):
        raise ValueError(
            f"a dev split of {size} rows needs more than {len(eligible)} usable training rows "
            f"({len(train) - len(eligible)} repeat a validation question); lower the dev size"
        )
    chosen = set(random.Random(seed).sample(eligible, size))
    return DevSplit(
        train=[e for i, e in enumerate(train) if i not in chosen],
        dev=[train[i] for i in sorted(chosen)],
        seed=seed,
        excluded_overlaps=len(train) - len(eligible),
    )


@dataclass
class Trial(Generic[Candidate]):
    candidate: Candidate
    scores: dict[int, float] = field(default_factory=dict)  # budget -> dev score


def successive_halving(
    candidates: Sequence[Candidate],
    min_budget: int,
    max_budget: int,
    evaluate: Callable[[Candidate, int], float],
    eta: int = 2,
) -> tuple[Candidate, list[Trial[Candidate]]]:
    """Return the best candidate and every trial's scores; ``evaluate(candidate, budget)`` -> dev score.

    Budgets grow by ``eta`` per rung up to ``max_budget``; ties keep the earlier candidate.
    """
    if not candidates:
        raise ValueError("no candidates to tune")
    if eta < 2 or min_budget <= 0 or max_budget < min_budget:
        raise ValueError("need eta >= 2 and 0 < min_budget <= max_budget")
    trials = [Trial(c) for c in candidates]
    alive = list(range(len(trials)))
    budget = min_budget
    while True:
        for i in alive:
            trials[i].scores[budget] = evaluate(trials[i].candidate, budget)
        if len(alive) == 1 or budget >= max_budget:
            break
        alive.sort(key=lambda i: (-trials[i].scores[budget], i))
        alive = sorted(alive[: max(1, len(alive) // eta)])
        budget = min(budget * eta, max_budget)
    best = max(alive, key=lambda i: (trials[i].scores[budget], -i))
    return trials[best].candidate, trials
