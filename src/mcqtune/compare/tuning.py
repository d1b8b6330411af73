"""Tuning a method's learning rate without touching the rows the final table is scored on.

A dev split is carved from the *training* data (seeded, its size reported) and any training row whose
question also appears among the held-out validation rows is kept out of it, so a tuned value can never
have been chosen on the questions it is later scored on. Trials are run and pruned by Optuna
(:mod:`mcqtune.search.study`), for ``compare --tune`` and ``mcqtune search`` alike.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcqtune.atomic import atomic_write_text
from mcqtune.data import MCQExample


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
