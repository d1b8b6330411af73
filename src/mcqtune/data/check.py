"""``mcqtune data check``: validate a whole file and summarise its shape, label balance and lengths."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcqtune.data.examples import MCQExample, answer_distribution, majority_baseline
from mcqtune.data.fields import FieldMap
from mcqtune.data.loading import open_source, read_examples
from mcqtune.errors import MAX_LISTED_PROBLEMS, Problem


def _percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> int:  # nearest-rank: an actual observed length
        return ordered[max(0, math.ceil(q * n) - 1)]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1]}


@dataclass
class DataReport:
    """What ``mcqtune data check`` prints: shape, label balance, lengths and every problem."""

    path: str
    format: str
    rows: int
    options_histogram: dict[int, int]
    answer_distribution: dict[str, int]
    majority_letter: str | None
    majority_share: float | None
    token_length_percentiles: dict[str, int] | None
    problems: list[Problem]
    skipped: int = 0
    warnings: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.rows,
            "skipped": self.skipped,
            "options_histogram": {str(k): v for k, v in self.options_histogram.items()},
            "answer_distribution": dict(self.answer_distribution),
            "majority_letter": self.majority_letter,
            "majority_share": self.majority_share,
            "token_length_percentiles": self.token_length_percentiles,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def format_text(self) -> str:
        out = [
            f"{self.path} (format: {self.format})",
            f"  rows: {self.rows} usable, {self.skipped} bad",
            "  options per question: "
            + (", ".join(f"{k}: {v}" for k, v in sorted(self.options_histogram.items())) or "-"),
        ]
        labelled = sum(self.answer_distribution.values())
        if labelled:
            dist = "  ".join(f"{k} {v} ({v / labelled:.1%})" for k, v in self.answer_distribution.items())
            out.append(f"  answers: {dist}")
        if self.majority_letter is not None and self.majority_share is not None:
            out.append(f"  majority baseline: always '{self.majority_letter}' = {self.majority_share:.1%}")
        if self.token_length_percentiles:
            out.append(
                "  token length: " + ", ".join(f"{k} {v}" for k, v in self.token_length_percentiles.items())
            )
        for title, items in (("problems", self.problems), ("warnings", self.warnings)):
            if not items:
                continue
            out.append(f"  {title} ({len(items)}):")
            out += [f"    {p}" for p in items[:MAX_LISTED_PROBLEMS]]
            if len(items) > MAX_LISTED_PROBLEMS:
                out.append(f"    ... and {len(items) - MAX_LISTED_PROBLEMS} more")
        if not self.problems and not self.warnings:
            out.append("  no problems found")
        return "\n".join(out)


def check_file(
    path: str | os.PathLike[str] | Any,
    format: str = "auto",
    field_map: FieldMap | None = None,
    token_length: Callable[[MCQExample], int] | None = None,
    *,
    require_answer: bool = True,
) -> DataReport:
    """Validate a whole file (or any source a ``DataRef`` names) and summarise it; every bad row is
    collected instead of stopping at the first."""
    source = open_source(path)
    result = read_examples(
        source, format, on_bad_rows="skip", field_map=field_map, limit=None, require_answer=require_answer
    )
    examples = result.examples
    distribution = answer_distribution(examples)
    majority: tuple[str | None, float | None] = (None, None)
    if sum(distribution.values()):
        majority = majority_baseline(examples)
    lengths = None
    if token_length is not None and examples:
        lengths = _percentiles([int(token_length(e)) for e in examples])
    return DataReport(
        path=source.name,
        format=result.format,
        rows=len(examples),
        options_histogram=dict(sorted(Counter(len(e.choices) for e in examples).items())),
        answer_distribution=distribution,
        majority_letter=majority[0],
        majority_share=majority[1],
        token_length_percentiles=lengths,
        problems=result.problems,
        skipped=result.skipped,
        warnings=result.warnings,
    )
