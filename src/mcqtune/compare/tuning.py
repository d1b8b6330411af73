"""Tuning a method's learning rate without touching the rows the final table is scored on.

A dev split is carved from the *training* data (seeded, its size reported) and any training row whose
question also appears among the held-out validation rows is kept out of it, so a tuned value can never
have been chosen on the questions it is later scored on. Trials are pruned by successive halving: every
candidate gets a small budget, the better half (1/``eta``) gets ``eta`` times more, until one is left.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from mcqtune.atomic import atomic_write_text
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


class Halving(Generic[Candidate]):
    """Successive halving driven from outside: :meth:`pending` names the rung to run (its candidates and
    budget), :meth:`report` takes their dev scores. So every trial of a rung, of every method being tuned,
    can run at once on whatever executes runs. Budgets grow by ``eta`` per rung up to ``max_budget``;
    ties keep the earlier candidate."""

    def __init__(self, candidates: Sequence[Candidate], min_budget: int, max_budget: int, eta: int = 2):
        if not candidates:
            raise ValueError("no candidates to tune")
        if eta < 2 or min_budget <= 0 or max_budget < min_budget:
            raise ValueError("need eta >= 2 and 0 < min_budget <= max_budget")
        self.trials = [Trial(c) for c in candidates]
        self.alive = list(range(len(self.trials)))
        self.budget = min_budget
        self.max_budget = max_budget
        self.eta = eta
        self.done = False

    def pending(self) -> tuple[list[Candidate], int] | None:
        """The candidates still in the race and the budget to train them with; None when finished."""
        if self.done:
            return None
        return [self.trials[i].candidate for i in self.alive], self.budget

    def report(self, scores: Sequence[float]) -> None:
        """Dev scores of the pending rung, in :meth:`pending`'s order; keeps the best 1/eta."""
        if self.done or len(scores) != len(self.alive):
            raise ValueError(f"expected {len(self.alive)} scores for the pending rung, got {len(scores)}")
        for i, score in zip(self.alive, scores, strict=True):
            self.trials[i].scores[self.budget] = score
        if len(self.alive) == 1 or self.budget >= self.max_budget:
            self.done = True
            return
        ranked = sorted(self.alive, key=lambda i: (-self.trials[i].scores[self.budget], i))
        self.alive = sorted(ranked[: max(1, len(ranked) // self.eta)])
        self.budget = min(self.budget * self.eta, self.max_budget)

    @property
    def best(self) -> Candidate:
        if not self.done:
            raise ValueError("tuning has not finished")
        return self.trials[max(self.alive, key=lambda i: (self.trials[i].scores[self.budget], -i))].candidate


def successive_halving(
    candidates: Sequence[Candidate],
    min_budget: int,
    max_budget: int,
    evaluate: Callable[[Candidate, int], float],
    eta: int = 2,
) -> tuple[Candidate, list[Trial[Candidate]]]:
    """Return the best candidate and every trial's scores; ``evaluate(candidate, budget)`` -> dev score."""
    halving = Halving(candidates, min_budget, max_budget, eta)
    while (rung := halving.pending()) is not None:
        alive, budget = rung
        halving.report([evaluate(c, budget) for c in alive])
    return halving.best, halving.trials


def write_jsonl(path: Path, examples: Iterable[MCQExample]) -> None:
    """Examples as the generic JSONL layout (answers as letters: no 0/1-base question), read back by the
    ordinary loaders; so a dev split's trials are plain ``train`` runs on plain files."""
    lines = [
        json.dumps(
            {
                "id": e.id,
                "question": e.question,
                "choices": list(e.choices),
                "answer": e.answer_letter,
            },
            ensure_ascii=False,
        )
        for e in examples
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
