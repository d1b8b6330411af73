"""The one schema every data layout becomes: :class:`MCQExample`, plus what a load returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mcqtune.errors import DataError, Problem

LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS = 2
MAX_OPTIONS = len(LETTERS)


@dataclass(frozen=True)
class MCQExample:
    """One normalised question; every loader produces exactly this, so later stages never see raw rows."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int | None
    subject: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        # Accept lists from hand-built examples but keep the dataclass hashable and the invariants true.
        if not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))
        if not MIN_OPTIONS <= len(self.choices) <= MAX_OPTIONS:
            raise ValueError(f"{len(self.choices)} choices; need {MIN_OPTIONS}-{MAX_OPTIONS}")
        if self.answer is not None and not (
            isinstance(self.answer, int)
            and not isinstance(self.answer, bool)
            and 0 <= self.answer < len(self.choices)
        ):
            raise ValueError(f"answer {self.answer!r} is not an index into {len(self.choices)} choices")

    @property
    def answer_letter(self) -> str | None:
        """The gold letter (A, B, ...) as shown in prompts, or None for unlabelled rows."""
        return None if self.answer is None else LETTERS[self.answer]

    def permuted(self, order: Sequence[int]) -> MCQExample:
        """A copy whose position j holds original option ``order[j]``; the answer follows its text.
        Training's option shuffling and evaluation's permutation analysis both reorder through this."""
        choices = tuple(self.choices[i] for i in order)
        answer = None if self.answer is None else list(order).index(self.answer)
        return replace(self, choices=choices, answer=answer)


@dataclass
class LoadResult:
    """Good examples plus what was wrong with the rest; ``skipped`` counts dropped rows, not problems."""

    examples: list[MCQExample]
    problems: list[Problem]
    format: str
    skipped: int
    warnings: list[Problem] = field(default_factory=list)
    # What was read, as a run records it (``DataRef.record``: kind, source, split, fingerprint); None for
    # a bare path.
    source: dict[str, Any] | None = None


def answer_distribution(examples: Iterable[MCQExample]) -> dict[str, int]:
    """Gold-letter counts with every letter up to the widest question present (zeros included, A first)."""
    examples = list(examples)
    if not examples:
        return {}
    width = max(len(e.choices) for e in examples)
    counts = dict.fromkeys(LETTERS[:width], 0)
    for e in examples:
        if e.answer is not None:
            counts[LETTERS[e.answer]] += 1
    return counts


def majority_baseline(examples: Iterable[MCQExample]) -> tuple[str, float]:
    """The always-answer-this-letter baseline any fine-tune must beat: (letter, share of labelled rows)."""
    counts = answer_distribution(examples)
    total = sum(counts.values())
    if total == 0:
        raise DataError("no labelled examples: the majority baseline needs gold answers")
    letter = max(counts, key=lambda k: counts[k])  # ties go to the earliest letter
    return letter, counts[letter] / total
