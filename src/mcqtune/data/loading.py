"""The ``data`` stage: load multiple-choice files, normalise them to one schema, validate every row.

Every supported layout becomes a list of :class:`MCQExample` (question, 2-10 stripped options, 0-based
answer index or ``None``). Problems are reported per row with ``file:line``, the offending field and a
reason, so a user can fix the file instead of guessing; ``on_bad_rows="skip"`` drops bad rows but still
records each one.

Formats (``FORMATS``):

- ``medmcqa``: the Hugging Face MedMCQA schema (``opa..opd``, ``cop`` **0-based**).
- ``medmcqa-raw``: the upstream MedMCQA release, same fields but ``cop`` is **1-based** (1-4). Auto-detection
  always assumes the HF schema for ``opa..opd`` rows and never shifts answers on its own; a row with
  ``cop == 4`` (impossible 0-based) stops the load with a message pointing at ``--format medmcqa-raw``.
- ``arc``: ``allenai/ai2_arc`` (``choices: {text, label}``, ``answerKey`` matched against the labels, which
  are digits for some upstream rows). The nested upstream ARC JSONL (``question: {stem, choices}``) is
  read too.
- ``mmlu-csv``: the original headerless MMLU CSV ``question,A,B,C,D,answer-letter``; the subject is the
  file stem without ``_val``/``_test``/``_dev``.
- ``jsonl``, ``csv`` (with header), ``parquet``: generic rows mapped by :class:`FieldMap`.

``medmcqa``, ``medmcqa-raw`` and ``arc`` rows may also come from ``.parquet`` (how the Hub ships them) or
``.csv`` files; the container is chosen by extension.

JSONL and CSV are read line by line with :mod:`json` and :mod:`csv` rather than through ``datasets``:
that is the only way to report the exact 1-based line of a bad row (an invalid JSON line, a ragged CSV
row, a non-UTF-8 byte) instead of failing the whole file inside Arrow. Parquet has no lines, so it is read
with ``datasets`` and problems carry the 0-based row index (shown as ``file:row N``). CSV line numbers are
physical file lines: the header is line 1, the first data row line 2 (a quoted multi-line cell reports the
line its record starts on).

Duplicate options (after strip, case-insensitive) and duplicate ids are *warnings*, not errors: the
bundled MedMCQA and ARC files contain such rows upstream, and dropping them would change the benchmark.
Warnings are kept in ``LoadResult.warnings`` / ``DataReport.warnings`` and logged once per load.
"""

from __future__ import annotations

import ast
import codecs
import csv
import difflib
import json
import logging
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcqtune.errors import MAX_LISTED_PROBLEMS, DataError, Problem

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS = 2
MAX_OPTIONS = len(LETTERS)
FORMATS = ("medmcqa", "medmcqa-raw", "arc", "mmlu-csv", "jsonl", "csv", "parquet")
BUNDLED_DATASETS = ("medmcqa", "arc_easy")
SPLITS = ("train", "validation")

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")
_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
_MMLU_SUFFIXES = ("_val", "_test", "_dev")
_DETECT_SCAN_LINES = 100
_INT_RE = re.compile(r"[+-]?\d+")
_MISSING = object()
_FORMAT_CHOICES = ", ".join(FORMATS)


# --------------------------------------------------------------------------------------------- types


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


@dataclass
class LoadResult:
    """Good examples plus what was wrong with the rest; ``skipped`` counts dropped rows, not problems."""

    examples: list[MCQExample]
    problems: list[Problem]
    format: str
    skipped: int
    warnings: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class FieldMap:
    """Where the generic ``jsonl``/``csv``/``parquet`` formats find each part of a question.

    ``choices`` is either one field holding a list (a JSON-encoded list string in CSV) or a tuple of
    column names, one option each. ``answer`` holds an integer index (``answer_base`` 0 or 1) or a letter
    A-J. In typed files (JSONL, parquet) a digit *string* answer is only accepted with ``answer_base=1``,
    where it is clearly a 1-based label; CSV has no types, so digits there are indices in either base.
    """

    question: str = "question"
    choices: str | tuple[str, ...] = "choices"
    answer: str = "answer"
    answer_base: int = 0
    id: str | None = "id"
    subject: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.answer_base not in (0, 1):
            raise DataError(f"field map: answer_base must be 0 or 1, got {self.answer_base!r}")
        if isinstance(self.choices, tuple) and not MIN_OPTIONS <= len(self.choices) <= MAX_OPTIONS:
            raise DataError(
                f"field map: {len(self.choices)} choice columns given; need {MIN_OPTIONS}-{MAX_OPTIONS}"
            )

    def required_fields(self, require_answer: bool) -> list[str]:
        names = [self.question]
        names += list(self.choices) if isinstance(self.choices, tuple) else [self.choices]
        if require_answer:
            names.append(self.answer)
        return names


# ------------------------------------------------------------------------------------------ helpers


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _letters_for(n: int) -> str:
    return f"{LETTERS[0]}-{LETTERS[n - 1]}" if n > 0 else "none"


@dataclass
class _Ctx:
    """Per-file facts the row converters need for messages, ids and parsing."""

    file: str
    stem: str
    unit: str  # "line" or "row"
    untyped: bool  # CSV: every value is a string
    require_answer: bool
    auto: bool  # format was auto-detected (affects the medmcqa cop==4 rule)


class _Row:
    """Collects a row's problems and warnings while its fields are parsed."""

    def __init__(self, ctx: _Ctx, line: int, data: dict[str, Any]) -> None:
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
            return _MISSING
        return self.data[key]

    def text(self, fld: str, value: Any, what: str) -> str | None:
        """A non-empty stripped string, or None after recording why not."""
        if value is _MISSING:
            return None
        if value is None or _is_nan(value):
            self.problem(fld, f"{what} is {'NaN' if _is_nan(value) else 'null'}")
            return None
        if not isinstance(value, str):
            self.problem(fld, f"{what} must be a string, got {_type_name(value)} {_short(value)}")
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
        if value is None or _is_nan(value):
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
            reason = f"duplicate options: {letters} are both {_short(choices[idxs[0]])}"
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
        if isinstance(value, str) and digit_strings and _INT_RE.fullmatch(value.strip()):
            return int(value.strip())
        self.problem(fld, f"answer must be an integer index, got {_type_name(value)} {_short(value)}")
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
            self.problem(fld, f"answer {_short(text)} is not a letter A-J")
            return None
        if index >= n:
            self.problem(fld, f"answer letter '{text.upper()}' not among options {_letters_for(n)}")
            return None
        return index

    def is_absent(self, value: Any) -> bool:
        return value is _MISSING or value is None or _is_nan(value) or (self.ctx.untyped and value == "")

    def missing_answer(self, fld: str, value: Any) -> None:
        """Record a missing answer only when answers are required (predict files may lack them)."""
        if self.ctx.require_answer:
            self.problem(fld, "missing required field" if value is _MISSING else "answer is missing")


# ------------------------------------------------------------------------------------- row readers

_RowItem = tuple[int, "dict[str, Any] | Problem"]


def _decoded_lines(path: Path, file: str, bad: dict[int, Problem]) -> Iterator[str]:
    """Yield each physical line decoded as UTF-8; undecodable lines are recorded in ``bad`` by number."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad[n] = Problem(
                    file,
                    n,
                    None,
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "re-save the file as UTF-8",
                )
                yield raw.decode("utf-8", errors="replace")


def _read_jsonl(path: Path, file: str) -> Iterator[_RowItem]:
    bad: dict[int, Problem] = {}
    first = True
    for n, text in enumerate(_decoded_lines(path, file, bad), 1):
        if n in bad:
            yield n, bad[n]
            first = False
            continue
        if not text.strip():
            continue
        hint = ""
        if first and text.lstrip().startswith("["):
            hint = "; the file looks like one JSON array, but JSON Lines (one object per line) is expected"
        first = False
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield n, Problem(file, n, None, f"invalid JSON: {exc.msg} at column {exc.colno}{hint}")
            continue
        if not isinstance(obj, dict):
            yield n, Problem(file, n, None, f"expected a JSON object, got {_type_name(obj)}{hint}")
            continue
        yield n, obj


def _csv_records(path: Path, file: str) -> Iterator[tuple[int, list[str] | Problem]]:
    """Non-blank CSV records with the physical line each starts on (the header included)."""
    bad: dict[int, Problem] = {}
    reader = csv.reader(_decoded_lines(path, file, bad))
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, Problem(file, start, None, f"CSV parse error: {exc}")
            continue
        end = reader.line_num
        broken = [bad[k] for k in range(start, end + 1) if k in bad]
        if broken:
            yield broken[0].line or start, broken[0]
            continue
        if not any(c.strip() for c in cells):
            continue  # blank line or a spreadsheet's empty row
        yield start, cells


def _read_csv_header(path: Path, file: str) -> tuple[list[str], int, Iterator[_RowItem]]:
    records = _csv_records(path, file)
    first = next(records, None)
    if first is None:
        raise DataError("file is empty", file=file)
    header_line, header = first
    if isinstance(header, Problem):
        raise DataError.from_problem(header)
    columns = [c.strip() for c in header]

    def rows() -> Iterator[_RowItem]:
        for n, cells in records:
            if isinstance(cells, Problem):
                yield n, cells
            elif len(cells) != len(columns):
                yield (
                    n,
                    Problem(
                        file, n, None, f"expected {len(columns)} cells as in the header, got {len(cells)}"
                    ),
                )
            else:
                yield n, dict(zip(columns, cells, strict=True))

    return columns, header_line, rows()


def _read_mmlu_csv(path: Path, file: str) -> Iterator[_RowItem]:
    for n, cells in _csv_records(path, file):
        if isinstance(cells, Problem):
            yield n, cells
        elif len(cells) != len(_MMLU_COLUMNS):
            yield n, Problem(file, n, None, f"expected 6 cells (question,A,B,C,D,answer), got {len(cells)}")
        else:
            yield n, dict(zip(_MMLU_COLUMNS, cells, strict=True))


def _read_parquet(path: Path, file: str) -> tuple[list[str], Iterator[_RowItem]]:
    import tempfile

    import datasets
    import pyarrow.parquet as pq

    try:
        num_rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # a corrupt file is the user's to fix
        raise DataError(f"cannot read as parquet: {exc}", file=file) from exc
    if num_rows == 0:
        raise DataError("file is empty (0 rows)", file=file)
    progress_was_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        # A throwaway cache: the user's file may change between runs and must not be served stale.
        with tempfile.TemporaryDirectory(prefix="mcqtune-parquet-") as cache:
            ds = datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
    except Exception as exc:  # any reader failure means a bad file on the user's side
        raise DataError(f"cannot read as parquet: {type(exc).__name__}: {exc}", file=file) from exc
    finally:
        if progress_was_on:
            datasets.enable_progress_bars()
    return list(ds.column_names), ((i, row) for i, row in enumerate(ds))


# --------------------------------------------------------------------------------- row converters

_Converted = tuple["MCQExample | None", list[Problem], list[Problem]]


def _finish(row: _Row, **kwargs: Any) -> _Converted:
    if not row.problems and (kwargs["question"] is None or kwargs["choices"] is None):
        row.problem(None, "row has no usable question or options")  # defensive: every path records why
    if row.problems:
        return None, row.problems, row.warnings
    ctx = row.ctx
    source = f"{ctx.file}:row {row.line}" if ctx.unit == "row" else f"{ctx.file}:{row.line}"
    return MCQExample(source=source, **kwargs), [], row.warnings


def _convert_medmcqa(row: _Row, one_based: bool) -> _Converted:
    question = row.text("question", row.get("question"), "question")
    items = [(k, LETTERS[i], row.get(k)) for i, k in enumerate(_MEDMCQA_OPTIONS)]
    choices = None if any(v is _MISSING for _, _, v in items) else row.options(items)
    cop = row.get("cop", required=False)
    answer = None
    if row.is_absent(cop):
        row.missing_answer("cop", cop)
    elif not one_based and not row.ctx.require_answer and cop == -1:
        pass  # the HF test split marks unlabelled rows with cop = -1
    else:
        value = row.integer("cop", cop, digit_strings=row.ctx.untyped)
        if value is not None and not one_based and value == 4 and row.ctx.auto:
            raise DataError(
                "cop=4 is impossible in the 0-based Hugging Face MedMCQA schema that auto-detection assumes; "
                "this looks like a raw upstream file with 1-based cop: pass --format medmcqa-raw "
                "(or format='medmcqa-raw')",
                file=row.ctx.file,
                line=row.line,
                field="cop",
                unit=row.ctx.unit,
            )
        if value is not None and choices is not None:
            if one_based:
                hint = "; HF-schema files are 0-based: use --format medmcqa" if value == 0 else ""
            else:
                hint = (
                    "; raw upstream MedMCQA files are 1-based: use --format medmcqa-raw" if value == 4 else ""
                )
            answer = row.index_in_range("cop", value, len(choices), 1 if one_based else 0, hint)
    if choices is not None:
        row.check_duplicates(items, choices, answer)
    return _finish(
        row,
        id=row.row_id("id"),
        question=question,
        choices=choices,
        answer=answer,
        subject=row.optional_text("subject_name"),
    )


def _convert_arc(row: _Row) -> _Converted:
    raw_q = row.get("question")
    if isinstance(raw_q, dict) and "stem" in raw_q:
        # Upstream ARC JSONL nests the options: question: {stem, choices: [{text, label}, ...]}.
        question = row.text("question.stem", raw_q.get("stem"), "question")
        raw_choices = raw_q.get("choices")
        if not isinstance(raw_choices, list) or not all(isinstance(c, dict) for c in raw_choices):
            row.problem(
                "question.choices",
                f"expected a list of {{text, label}} objects, got {_type_name(raw_choices)}",
            )
            texts: Any = None
            labels: Any = None
        else:
            texts = [c.get("text") for c in raw_choices]
            labels = [c.get("label") for c in raw_choices]
        text_field, label_field = "question.choices.text", "question.choices.label"
    else:
        question = row.text("question", raw_q, "question")
        raw_choices = row.get("choices")
        texts = labels = None
        text_field, label_field = "choices.text", "choices.label"
        if raw_choices is _MISSING:
            pass
        elif not isinstance(raw_choices, dict):
            row.problem(
                "choices", f"expected an object with 'text' and 'label' lists, got {_type_name(raw_choices)}"
            )
        else:
            texts, labels = raw_choices.get("text", _MISSING), raw_choices.get("label", _MISSING)
            for name, value in (("text", texts), ("label", labels)):
                if value is _MISSING:
                    row.problem(f"choices.{name}", "missing required field")
                elif not isinstance(value, list):
                    row.problem(f"choices.{name}", f"expected a list, got {_type_name(value)}")
            if not isinstance(texts, list) or not isinstance(labels, list):
                texts = labels = None

    choices = None
    items: list[tuple[str, str, Any]] = []
    label_strs: list[str] = []
    if texts is not None and labels is not None:
        if len(texts) != len(labels):
            row.problem(label_field, f"{len(texts)} option texts but {len(labels)} labels")
        else:
            label_strs = ["" if lb is None else str(lb).strip() for lb in labels]
            items = [(text_field, label_strs[i] or LETTERS[i % MAX_OPTIONS], t) for i, t in enumerate(texts)]
            choices = row.options(items)
            if len(set(label_strs)) != len(label_strs) or "" in label_strs:
                row.problem(label_field, f"labels must be distinct and non-empty, got {label_strs}")
                choices = None

    key = row.get("answerKey", required=False)
    answer = None
    if row.is_absent(key) or (isinstance(key, str) and not key.strip()):
        row.missing_answer("answerKey", key)
    elif choices is not None:
        key_str = str(key).strip()
        if key_str in label_strs:
            answer = label_strs.index(key_str)
        else:
            row.problem("answerKey", f"answer {_short(key_str)} not among labels {', '.join(label_strs)}")
    if choices is not None:
        row.check_duplicates(items, choices, answer)
    return _finish(row, id=row.row_id("id"), question=question, choices=choices, answer=answer, subject=None)


def _parse_list_cell(row: _Row, fld: str, value: Any) -> list[Any] | None:
    """A list-of-options field; CSV cells hold it JSON-encoded (or as a Python repr, as pandas writes)."""
    if isinstance(value, str) and row.ctx.untyped:
        text = value.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(text) if text.startswith("[") else text
            except (ValueError, SyntaxError):
                value = text
        if not isinstance(value, list):
            row.problem(fld, f'expected a JSON list of options like ["a", "b"], got {_short(text)}')
            return None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        row.problem(fld, f"expected a list of options, got {_type_name(value)} {_short(value)}")
        return None
    return value


def _generic_answer(row: _Row, fm: FieldMap, n: int, letters_only: bool) -> int | None:
    fld = fm.answer
    value = row.get(fld, required=False)
    if row.is_absent(value):
        row.missing_answer(fld, value)
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            row.missing_answer(fld, value)
            return None
        if len(text) == 1 and text.isalpha():
            return row.letter(fld, text, n)
        if letters_only:
            row.problem(fld, f"answer {_short(text)} is not a letter A-{LETTERS[n - 1]}")
            return None
        if _INT_RE.fullmatch(text):
            if row.ctx.untyped or fm.answer_base == 1:
                return row.index_in_range(fld, int(text), n, fm.answer_base)
            row.problem(
                fld,
                f"answer {_short(text)} is a string of digits; store an integer index, a letter, "
                "or set answer_base=1 if these are 1-based labels",
            )
            return None
        row.problem(fld, f"answer {_short(text)} is neither an integer index nor a letter A-J")
        return None
    if letters_only:
        row.problem(fld, f"answer must be a letter, got {_type_name(value)} {_short(value)}")
        return None
    index = row.integer(fld, value, digit_strings=False)
    return None if index is None else row.index_in_range(fld, index, n, fm.answer_base)


def _convert_generic(
    row: _Row, fm: FieldMap, subject: str | None = None, letters_only: bool = False
) -> _Converted:
    question = row.text(fm.question, row.get(fm.question), "question")
    items: list[tuple[str, str, Any]] = []
    choices = None
    if isinstance(fm.choices, tuple):
        values = [(col, LETTERS[i], row.get(col)) for i, col in enumerate(fm.choices)]
        if all(v is not _MISSING for _, _, v in values):
            items = values
            choices = row.options(items)
    else:
        raw = row.get(fm.choices)
        if raw is not _MISSING:
            listed = _parse_list_cell(row, fm.choices, raw)
            if listed is not None:
                items = [(fm.choices, LETTERS[i % MAX_OPTIONS], v) for i, v in enumerate(listed)]
                choices = row.options(items)
    answer = None
    if choices is not None:
        answer = _generic_answer(row, fm, len(choices), letters_only)
        row.check_duplicates(items, choices, answer)
    elif fm.answer not in row.data and row.ctx.require_answer:
        row.problem(fm.answer, "missing required field")
    return _finish(
        row,
        id=row.row_id(fm.id),
        question=question,
        choices=choices,
        answer=answer,
        subject=subject if subject is not None else row.optional_text(fm.subject),
    )


# -------------------------------------------------------------------------------------- detection


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("file not found", file=str(path))
    if p.is_dir():
        raise DataError("is a directory; pass a data file (.jsonl, .csv or .parquet)", file=str(path))
    if not p.is_file():
        raise DataError("not a regular file", file=str(path))
    return p


def _first_object(p: Path, file: str) -> dict[str, Any] | None:
    """The first JSON object among the first lines (bad lines are the loader's to report).

    Returns None when there is none; raises when the only obstacle seen is the encoding, since then the
    encoding, not the format, is what the user must fix.
    """
    bad: dict[int, Problem] = {}
    seen = 0
    for n, text in enumerate(_decoded_lines(p, file, bad), 1):
        if not text.strip() and n not in bad:
            continue
        seen += 1
        if seen > _DETECT_SCAN_LINES:
            break
        if n in bad:
            continue
        if seen == 1 and text.lstrip().startswith("["):
            raise DataError(
                "looks like one JSON array; convert it to JSON Lines (one object per line)", file=file, line=n
            )
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
    if bad:
        raise DataError.from_problem(bad[min(bad)])
    return None


def _first_csv_record(p: Path, file: str) -> list[str] | None:
    """The first readable CSV record; an encoding problem before it is raised, as for JSONL."""
    for _, cells in _csv_records(p, file):
        if not isinstance(cells, Problem):
            return cells
        if cells.reason.startswith("not valid UTF-8"):
            raise DataError.from_problem(cells)
    return None


def _schema_of(keys: Iterable[str], sample: dict[str, Any] | None, file: str, where: str) -> str | None:
    """medmcqa / arc / generic from field names; None when nothing fits, DataError when several do."""
    keyset = set(keys)
    is_medmcqa = {"opa", "opb"} <= keyset  # not all four: a row missing one is the loader's to report
    choices = sample.get("choices") if sample is not None else None
    question = sample.get("question") if sample is not None else None
    is_arc = (
        "answerKey" in keyset
        or (isinstance(choices, dict) and "text" in choices)
        or isinstance(question, dict)
    )
    if is_medmcqa and is_arc:
        raise DataError(
            f"ambiguous format: {where} has both MedMCQA fields (opa..opd) and ARC fields "
            f"(choices.text/answerKey); pass --format (one of: {_FORMAT_CHOICES})",
            file=file,
        )
    if is_medmcqa:
        return "medmcqa"
    if is_arc:
        return "arc"
    if "question" in keyset and ("choices" in keyset or {"A", "B"} <= keyset):
        return "generic"
    return None


def _unknown(file: str, what: str, names: Iterable[str]) -> DataError:
    shown = ", ".join(sorted(names)[:20]) or "none"
    return DataError(
        f"cannot detect the format: {what} ({shown}) match no known layout; pass --format (one of: "
        f"{_FORMAT_CHOICES}) and, for jsonl/csv/parquet, a field map naming the question, choices and "
        "answer fields",
        file=file,
    )


def _looks_like_mmlu(cells: list[str]) -> bool:
    if len(cells) != len(_MMLU_COLUMNS) or cells[-1].strip() not in ("A", "B", "C", "D"):
        return False
    header_words = {"question", "prompt", "answer", "label", "id"}
    return cells[0].strip().lower() not in header_words


def detect_format(path: str | os.PathLike[str]) -> str:
    """Pick a format from the extension and the first row, so users rarely need ``--format``.

    ``opa..opd`` rows are always taken as the 0-based HF MedMCQA schema; raw upstream files (1-based
    ``cop``) need ``--format medmcqa-raw``. Raises :class:`DataError` when the layout is unknown or
    ambiguous, listing the ``--format`` choices.
    """
    p = _check_path(path)
    file = str(path)
    if p.stat().st_size == 0:
        raise DataError("file is empty", file=file)
    suffix = p.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        obj = _first_object(p, file)
        if obj is None:
            raise DataError(
                f"cannot detect the format: no JSON object in the first lines; pass --format (one of: "
                f"{_FORMAT_CHOICES})",
                file=file,
            )
        schema = _schema_of(obj.keys(), obj, file, "the first row")
        if schema is None:
            raise _unknown(file, "the first row's keys", obj.keys())
        return "jsonl" if schema == "generic" else schema
    if suffix == ".csv":
        first = _first_csv_record(p, file)
        if first is None:
            raise DataError("file is empty or unreadable as CSV", file=file)
        if _looks_like_mmlu(first):
            return "mmlu-csv"
        columns = [c.strip() for c in first]
        schema = _schema_of(columns, None, file, "the header")
        if schema is None or schema == "arc":
            raise _unknown(file, "the header's columns", columns)
        return "csv" if schema == "generic" else schema
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema_pa = pq.read_schema(p)
        except Exception as exc:  # a corrupt file is the user's to fix
            raise DataError(f"cannot read as parquet: {exc}", file=file) from exc
        names = list(schema_pa.names)
        sample = None
        if "choices" in names and str(schema_pa.field("choices").type).startswith("struct"):
            sample = {"choices": {"text": []}}
        schema = _schema_of(names, sample, file, "the columns")
        if schema is None:
            raise _unknown(file, "the columns", names)
        return "parquet" if schema == "generic" else schema
    raise DataError(
        f"cannot detect the format from the extension '{p.suffix or '(none)'}'; use .jsonl, .csv or "
        f".parquet, or pass --format (one of: {_FORMAT_CHOICES})",
        file=file,
    )


# ------------------------------------------------------------------------------------------ loading


def _default_field_map(keys: Iterable[str]) -> FieldMap:
    """The default map, except that option columns A, B, ... stand in for a missing ``choices`` list."""
    keyset = set(keys)
    if "choices" in keyset or not {"A", "B"} <= keyset:
        return FieldMap()
    cols: list[str] = []
    for letter in LETTERS:
        if letter not in keyset:
            break
        cols.append(letter)
    return FieldMap(choices=tuple(cols))


def _format_hint(p: Path, fmt: str) -> str:
    """'; it looks like X' when detection confidently names another format, else ''."""
    try:
        guess = detect_format(p)
    except DataError:
        return ""
    if guess == fmt or {guess, fmt} <= {"medmcqa", "medmcqa-raw"}:
        return ""
    return f"; the file looks like '{guess}' (try --format {guess}, or auto)"


def _container(fmt: str, p: Path) -> str:
    if fmt in ("jsonl", "csv", "parquet"):
        return fmt
    if fmt == "mmlu-csv":
        return "mmlu-csv"
    suffix = p.suffix.lower()
    return {".parquet": "parquet", ".csv": "csv"}.get(suffix, "jsonl")


def _required_columns(fmt: str, fm: FieldMap, require_answer: bool) -> list[str]:
    if fmt in ("medmcqa", "medmcqa-raw"):
        return ["question", *_MEDMCQA_OPTIONS] + (["cop"] if require_answer else [])
    if fmt == "arc":
        return ["question", "choices"] + (["answerKey"] if require_answer else [])
    return fm.required_fields(require_answer)


def _mmlu_subject(p: Path) -> str:
    stem = p.stem
    for suffix in _MMLU_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _load(
    path: str | os.PathLike[str],
    format: str,
    *,
    on_bad_rows: str,
    field_map: FieldMap | None,
    limit: int | None,
    require_answer: bool,
) -> LoadResult:
    if on_bad_rows not in ("error", "skip"):
        raise DataError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    p = _check_path(path)
    file = str(path)
    fmt = format
    auto = fmt == "auto"
    if auto:
        if p.stat().st_size == 0:
            raise DataError("file is empty", file=file)
        if field_map is not None:
            # A field map only means something for the generic formats.
            fmt = {".csv": "csv", ".parquet": "parquet"}.get(p.suffix.lower(), "jsonl")
        else:
            fmt = detect_format(p)
    elif fmt not in FORMATS:
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"unknown format {fmt!r}{hint}; choose one of: auto, {_FORMAT_CHOICES}")

    container = _container(fmt, p)
    ctx = _Ctx(
        file=file,
        stem=p.stem,
        unit="row" if container == "parquet" else "line",
        untyped=container in ("csv", "mmlu-csv"),
        require_answer=require_answer,
        auto=auto,
    )
    columns: list[str] | None = None
    header_line: int | None = None
    first: dict[str, Any] | None = None
    explicit = not auto or field_map is not None  # the user chose the layout, so check it fits
    rows: Iterator[_RowItem]
    if container == "jsonl":
        rows = _read_jsonl(p, file)
        if explicit or fmt == "jsonl":
            try:
                first = _first_object(p, file)
            except DataError:
                first = None  # the row loop reports the same lines with their numbers
        if fmt == "jsonl" and field_map is None:
            field_map = _default_field_map(first.keys() if first is not None else [])
    elif container == "mmlu-csv":
        rows = _read_mmlu_csv(p, file)
    elif container == "csv":
        columns, header_line, rows = _read_csv_header(p, file)
    else:
        columns, rows = _read_parquet(p, file)

    fm = field_map if field_map is not None else _default_field_map(columns or [])
    required = _required_columns(fmt, fm, require_answer)
    if columns is not None:
        missing = [c for c in required if c not in columns]
        if missing:
            names = ", ".join(f"'{c}'" for c in missing)
            raise DataError(
                f"missing column{'s' if len(missing) > 1 else ''} {names} (columns: {', '.join(columns)})"
                f"{_format_hint(p, fmt)}; pass the right --format or a field map",
                file=file,
                line=header_line,
                field=missing[0],
            )
    elif first is not None and explicit:
        # An explicit format that does not fit the file at all would otherwise give one "missing
        # field" per row; say once what the file looks like instead.
        missing = [c for c in required if c not in first]
        hint = _format_hint(p, fmt) if missing else ""
        if hint:
            names = ", ".join(f"'{c}'" for c in missing)
            raise DataError(
                f"format '{fmt}' needs field{'s' if len(missing) > 1 else ''} {names}, which the first row "
                f"lacks (keys: {', '.join(first)}){hint}",
                file=file,
                field=missing[0],
            )

    if fmt in ("medmcqa", "medmcqa-raw"):
        one_based = fmt == "medmcqa-raw"

        def convert(row: _Row) -> _Converted:
            return _convert_medmcqa(row, one_based)
    elif fmt == "arc":
        convert = _convert_arc
    elif fmt == "mmlu-csv":
        mmlu_map = FieldMap(question="question", choices=("A", "B", "C", "D"), answer="answer", id=None)
        subject = _mmlu_subject(p)

        def convert(row: _Row) -> _Converted:
            return _convert_generic(row, mmlu_map, subject=subject, letters_only=True)
    else:

        def convert(row: _Row) -> _Converted:
            return _convert_generic(row, fm)

    examples: list[MCQExample] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    skipped = 0
    any_rows = False
    first_line_of_id: dict[str, int] = {}
    for line, item in rows:
        any_rows = True
        if isinstance(item, Problem):
            item.unit = ctx.unit
            problems.append(item)
            skipped += 1
            continue
        example, row_problems, row_warnings = convert(_Row(ctx, line, item))
        warnings += row_warnings
        if example is None:
            problems += row_problems
            skipped += 1
            continue
        if example.id in first_line_of_id:
            where = "row" if ctx.unit == "row" else "line"
            warnings.append(
                Problem(
                    file,
                    line,
                    None,
                    f"duplicate id {example.id!r} (first seen on {where} {first_line_of_id[example.id]})",
                    "warning",
                    ctx.unit,
                )
            )
        else:
            first_line_of_id[example.id] = line
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not any_rows:
        raise DataError(
            "file is empty" if header_line is None else "no data rows after the header", file=file
        )

    if auto and fmt == "medmcqa" and limit is None:
        answers = [e.answer for e in examples if e.answer is not None]
        if len(answers) >= 50 and 0 not in answers:
            warnings.append(
                Problem(
                    file,
                    None,
                    "cop",
                    f"no row has cop=0 among {len(answers)} labelled rows; if this is a raw upstream "
                    "MedMCQA file (1-based cop), pass --format medmcqa-raw",
                    "warning",
                )
            )
    return LoadResult(examples=examples, problems=problems, format=fmt, skipped=skipped, warnings=warnings)


def load_examples(
    path: str | os.PathLike[str],
    format: str = "auto",
    *,
    on_bad_rows: str = "error",
    field_map: FieldMap | None = None,
    limit: int | None = None,
    require_answer: bool = True,
) -> LoadResult:
    """Load and validate a data file.

    ``on_bad_rows="error"`` scans the whole file and raises one :class:`DataError` listing every problem
    (a user fixing a file wants them all at once); ``"skip"`` drops bad rows and records them.
    ``limit`` stops after that many good examples. ``require_answer=False`` accepts rows without a gold
    answer (``answer=None``) for prediction. A load that leaves no usable example raises.
    """
    result = _load(
        path, format, on_bad_rows=on_bad_rows, field_map=field_map, limit=limit, require_answer=require_answer
    )
    file = str(path)
    if result.problems and on_bad_rows == "error":
        raise DataError.from_problems(file, result.problems, result.skipped)
    if not result.examples:
        first = f"; first: {result.problems[0]}" if result.problems else ""
        raise DataError(
            f"no usable rows: all {result.skipped} rows have problems{first}",
            file=file,
            problems=result.problems,
        )
    if result.warnings:
        # The bundled files' upstream quirks (duplicate options) are known; do not nag on every demo run.
        bundled = Path(__file__).parent / "bundled"
        level = logging.INFO if Path(path).resolve().is_relative_to(bundled.resolve()) else logging.WARNING
        log.log(
            level, "%s: %d warning(s), rows kept (first: %s)", file, len(result.warnings), result.warnings[0]
        )
    return result


# ------------------------------------------------------------------------------- bundled datasets


def _bundled_key(name: str) -> str | None:
    key = name.strip().lower().replace("-", "_")
    return key if key in BUNDLED_DATASETS else None


def bundled_path(name: str, split: str) -> Path:
    """Path of a dataset shipped in the package, so demos and tests run offline."""
    key = _bundled_key(name)
    if key is None:
        raise DataError(f"unknown bundled dataset {name!r}; bundled: {', '.join(BUNDLED_DATASETS)}")
    split_key = _SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if split_key not in SPLITS:
        raise DataError(f"unknown split {split!r} for bundled {key}; choose one of: {', '.join(SPLITS)}")
    path = Path(__file__).parent / "bundled" / key / f"{split_key}.jsonl"
    if not path.is_file():
        raise DataError("bundled data file is missing from the installation", file=str(path))
    return path


def resolve_data(spec: str, split: str) -> Path:
    """Turn a ``--data`` value into a file: an existing file path wins, then a bundled dataset name."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if _bundled_key(spec) is not None:
        return bundled_path(spec, split)
    if p.is_dir():
        raise DataError(
            f"is a directory, not a data file; pass a .jsonl/.csv/.parquet file or a bundled dataset "
            f"({', '.join(BUNDLED_DATASETS)})",
            file=spec,
        )
    close = difflib.get_close_matches(spec.strip().lower().replace("-", "_"), BUNDLED_DATASETS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(
        f"{spec!r} is neither an existing file nor a bundled dataset ({', '.join(BUNDLED_DATASETS)}){hint}"
    )


# ---------------------------------------------------------------------------------------- reports


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
    path: str | os.PathLike[str],
    format: str = "auto",
    field_map: FieldMap | None = None,
    token_length: Callable[[MCQExample], int] | None = None,
    *,
    require_answer: bool = True,
) -> DataReport:
    """Validate a whole file and summarise it; every bad row is collected instead of stopping at the first."""
    result = _load(
        path, format, on_bad_rows="skip", field_map=field_map, limit=None, require_answer=require_answer
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
        path=str(path),
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
