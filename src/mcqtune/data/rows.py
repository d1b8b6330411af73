"""Row parsing shared by every layout: a row's fields become text, options and an answer index, and
every reason a field cannot is recorded with the file, line and field it came from."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcqtune.data.examples import LETTERS, MAX_OPTIONS, MIN_OPTIONS, MCQExample
from mcqtune.data.fields import FieldMap
from mcqtune.data.readers import type_name
from mcqtune.errors import Problem

INT_RE = re.compile(r"[+-]?\d+")
MISSING = object()
_QUERY_PREFIX = re.compile(r"^\s*Question:\s*")
_QUERY_SUFFIX = re.compile(r"\s*Answer:\s*$")


def strip_query(text: str) -> str:
    """``Question: ... Answer:`` (lm-evaluation-harness / llm-foundry queries) -> the question alone."""
    return _QUERY_SUFFIX.sub("", _QUERY_PREFIX.sub("", text))


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def letters_for(n: int) -> str:
    return f"{LETTERS[0]}-{LETTERS[n - 1]}" if n > 0 else "none"


@dataclass
class Ctx:
    """Per-file facts the row converters need for messages, ids and parsing."""

    file: str
    stem: str
    unit: str  # "line" or "row"
    untyped: bool  # CSV: every value is a string
    require_answer: bool
    auto: bool  # format was auto-detected (affects the medmcqa cop==4 rule)
    # Digit strings are answer indices when the base is known: CSV has no types, and a base the user
    # gave or the data showed says how to read them. A typed file's "2" under an assumed base is an error.
    digit_strings: bool = False
    strip_query_prefix: bool = False


class Row:
    """Collects a row's problems and warnings while its fields are parsed."""

    def __init__(self, ctx: Ctx, line: int, data: dict[str, Any]) -> None:
        self.ctx = ctx
        self.line = line
        self.data = data
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, fld: str | None, reason: str) -> None:
        self.problems.append(Problem(self.ctx.file, self.line, fld, reason, unit=self.ctx.unit))

    def warn(self, fld: str | None, reason: str) -> None:
        self.warnings.append(Problem(self.ctx.file, self.line, fld, reason, "warning", self.ctx.unit))

    def get(self, key: str, *, required: bool = True) -> Any:
        if key not in self.data:
            if required:
                self.problem(key, "missing required field")
            return MISSING
        return self.data[key]

    def text(self, fld: str, value: Any, what: str) -> str | None:
        """A non-empty stripped string, or None after recording why not."""
        if value is MISSING:
            return None
        if value is None or is_nan(value):
            self.problem(fld, f"{what} is {'NaN' if is_nan(value) else 'null'}")
            return None
        if not isinstance(value, str):
            self.problem(fld, f"{what} must be a string, got {type_name(value)} {short(value)}")
            return None
        text = value.strip()
        if not text:
            self.problem(fld, f"{what} is empty")
            return None
        return text

    def optional_text(self, key: str | None) -> str | None:
        if key is None:
            return None
        value = self.data.get(key)
        if value is None or is_nan(value):
            return None
        text = str(value).strip()
        return text or None

    def row_id(self, key: str | None) -> str:
        value = self.optional_text(key)
        return value if value is not None else f"{self.ctx.stem}-{self.line}"

    def options(self, items: Sequence[tuple[str, str, Any]]) -> tuple[str, ...] | None:
        """Validate ``(field, label, value)`` options; count and per-option problems are errors."""
        count_field = items[0][0] if items and len({f for f, _, _ in items}) == 1 else None
        if len(items) < MIN_OPTIONS:
            self.problem(count_field, f"{len(items)} option(s); need at least {MIN_OPTIONS}")
            return None
        if len(items) > MAX_OPTIONS:
            self.problem(count_field, f"{len(items)} options; at most {MAX_OPTIONS} (A-J) are supported")
            return None
        texts = [self.text(fld, value, f"option {label}") for fld, label, value in items]
        if any(t is None for t in texts):
            return None
        return tuple(t for t in texts if t is not None)

    def check_duplicates(
        self, items: Sequence[tuple[str, str, Any]], choices: tuple[str, ...], answer: int | None
    ) -> None:
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(choices):
            groups.setdefault(text.casefold(), []).append(i)
        for idxs in groups.values():
            if len(idxs) < 2:
                continue
            letters = " and ".join(LETTERS[i] for i in idxs)
            fields = {items[i][0] for i in idxs}
            fld = fields.pop() if len(fields) == 1 else ",".join(items[i][0] for i in idxs)
            reason = f"duplicate options: {letters} are both {short(choices[idxs[0]])}"
            if answer in idxs:
                reason += " (the gold answer is one of them, so the item is ambiguous)"
            self.warn(fld, reason)

    def integer(self, fld: str, value: Any, *, digit_strings: bool) -> int | None:
        """An int from an int, an integral float, or (when allowed) a digit string; else a problem."""
        if isinstance(value, bool):
            self.problem(fld, f"answer must be an integer, got boolean {value!r}")
            return None
        if isinstance(value, numbers.Integral):  # numpy integers too
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and digit_strings and INT_RE.fullmatch(value.strip()):
            return int(value.strip())
        self.problem(fld, f"answer must be an integer index, got {type_name(value)} {short(value)}")
        return None

    def index_in_range(self, fld: str, index: int, n: int, base: int, hint: str = "") -> int | None:
        zero = index - base
        if 0 <= zero < n:
            return zero
        if base == 0:
            self.problem(fld, f"answer index {index} out of range for {n} options{hint}")
        else:
            self.problem(fld, f"answer {index} out of range for {n} options (1-based: expected 1-{n}){hint}")
        return None

    def letter(self, fld: str, text: str, n: int) -> int | None:
        index = LETTERS.find(text.upper()) if len(text) == 1 else -1
        if index < 0:
            self.problem(fld, f"answer {short(text)} is not a letter A-J")
            return None
        if index >= n:
            self.problem(fld, f"answer letter '{text.upper()}' not among options {letters_for(n)}")
            return None
        return index

    def is_absent(self, value: Any) -> bool:
        return value is MISSING or value is None or is_nan(value) or (self.ctx.untyped and value == "")

    def missing_answer(self, fld: str, value: Any) -> None:
        """Record a missing answer only when answers are required (predict files may lack them)."""
        if self.ctx.require_answer:
            self.problem(fld, "missing required field" if value is MISSING else "answer is missing")


Converted = tuple["MCQExample | None", list[Problem], list[Problem]]


def finish(
    row: Row,
    fm: FieldMap,
    question: str | None,
    choices: tuple[str, ...] | None,
    answer: int | None,
    subject: str | None = None,
) -> Converted:
    """The row's example (id and subject from the map's fields), or None with every problem it had."""
    if not row.problems and (question is None or choices is None):
        row.problem(None, "row has no usable question or options")  # defensive: every path records why
    if row.problems or question is None or choices is None:
        return None, row.problems, row.warnings
    ctx = row.ctx
    if ctx.strip_query_prefix:
        question = strip_query(question)
        if not question:
            row.problem(fm.question, "question is empty once 'Question:' and 'Answer:' are stripped")
            return None, row.problems, row.warnings
    source = f"{ctx.file}:row {row.line}" if ctx.unit == "row" else f"{ctx.file}:{row.line}"
    example = MCQExample(
        id=row.row_id(fm.id),
        question=question,
        choices=choices,
        answer=answer,
        subject=subject if subject is not None else row.optional_text(fm.subject),
        source=source,
    )
    return example, [], row.warnings
