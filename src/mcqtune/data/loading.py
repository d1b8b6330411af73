"""Load a data file: pick its layout, resolve its fields, convert and validate every row.

Every supported layout (``formats.LAYOUTS``) becomes a list of :class:`MCQExample` (question, 2-10 stripped
options, 0-based answer index or ``None``). Problems are reported per row with ``file:line``, the
offending field and a reason, so a user can fix the file instead of guessing; ``on_bad_rows="skip"`` drops
bad rows but still records each one.

A user's :class:`FieldMap` replaces the layout's field names it sets. An answer column whose integers could
be 0- or 1-based is read in the base the data shows (a 0 means 0-based, an answer equal to its row's
number of options 1-based); when the data cannot tell, or the file has two answer columns, the load stops
with the exact flags that read it.

Duplicate options (after strip, case-insensitive) and duplicate ids are *warnings*, not errors: the
bundled MedMCQA and ARC files contain such rows upstream, and dropping them would change the benchmark.
Warnings are kept in ``LoadResult.warnings`` / ``DataReport.warnings`` and logged once per load.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcqtune.data.bundled_sets import BUNDLED_DIR
from mcqtune.data.examples import LoadResult, MCQExample
from mcqtune.data.fields import FieldMap
from mcqtune.data.formats import (
    FORMAT_CHOICES,
    FORMATS,
    LAYOUTS,
    Layout,
    answer_candidates,
    choice_items,
    detect_layout,
)
from mcqtune.data.readers import (
    JSONL_SUFFIXES,
    Rows,
    first_csv_record,
    first_object,
    first_parquet_row,
    open_rows,
    reader_for,
)
from mcqtune.data.rows import INT_RE, Ctx, Row
from mcqtune.errors import DataError, Problem

log = logging.getLogger(__name__)

# Likely question fields, to suggest a field map for a file no layout fits.
_QUESTION_GUESSES = ("question", "query", "prompt", "question_stem", "stem", "input", "text")


# ------------------------------------------------------------------------------------- first look


@dataclass
class _Peek:
    """What detection sees of a file: the first row's keys (or the header) and typed values if any."""

    kind: str  # jsonl, csv or parquet (by extension)
    keys: list[str]
    sample: dict[str, Any] | None
    where: str  # "the first row", "the header", "the columns" (for messages)


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("file not found", file=str(path))
    if p.is_dir():
        raise DataError("is a directory; pass a data file (.jsonl, .csv or .parquet)", file=str(path))
    if not p.is_file():
        raise DataError("not a regular file", file=str(path))
    return p


def _peek(p: Path, file: str) -> _Peek:
    if p.stat().st_size == 0:
        raise DataError("file is empty", file=file)
    suffix = p.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        first = first_object(p, file)
        if first is None:
            raise DataError(
                f"cannot detect the format: no JSON object in the first lines; pass --format (one of: "
                f"{FORMAT_CHOICES})",
                file=file,
            )
        return _Peek("jsonl", list(first[1]), first[1], "the first row")
    if suffix == ".csv":
        record = first_csv_record(p, file)
        if record is None:
            raise DataError("file is empty or unreadable as CSV", file=file)
        return _Peek("csv", [c.strip() for c in record], None, "the header")
    if suffix == ".parquet":
        names, sample = first_parquet_row(p, file)
        return _Peek("parquet", names, sample, "the columns")
    raise DataError(
        f"cannot detect the format from the extension '{p.suffix or '(none)'}'; use .jsonl, .csv or "
        f".parquet, or pass --format (one of: {FORMAT_CHOICES})",
        file=file,
    )


@dataclass
class _Top:
    """The field names a file shows before its rows: a header, a schema, or the first JSON object's keys."""

    keys: list[str]  # empty when nothing readable was found
    line: int | None  # the header's line or the first object's; None for parquet
    is_header: bool


class _FileSource:
    """A data file as the loader reads it: its first look, its rows and the names messages give it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.p = _check_path(path)
        self.name = str(path)
        self.stem = self.p.stem
        self.bundled = _is_bundled_file(self.p)
        self.thing = "the file"
        self.record: dict[str, Any] | None = None  # set by a DataRef: what metrics.json says it read

    def check_not_empty(self) -> None:
        if self.p.stat().st_size == 0:
            raise DataError("file is empty", file=self.name)

    def peek(self) -> _Peek:
        return _peek(self.p, self.name)

    def generic_layout(self) -> Layout:
        return LAYOUTS[reader_for(self.p)]

    def rows(self, layout: Layout) -> Rows:
        return open_rows(self.p, self.name, layout.reader or reader_for(self.p))

    def top(self, rows: Rows) -> _Top:
        if rows.columns is not None:
            return _Top(rows.columns, rows.header_line, True)
        try:
            first = first_object(self.p, self.name)
        except DataError:
            first = None  # the row loop reports the same lines with their numbers
        return _Top(list(first[1]), first[0], False) if first else _Top([], None, False)


class TableSource:
    """Rows already in a table (a ``datasets.Dataset``: a saved or hub data set's split), read like a
    parquet file: typed values, a column schema, problems at 0-based row indices under ``name``."""

    def __init__(self, table: Any, name: str, stem: str, record: dict[str, Any] | None = None) -> None:
        self.table = table
        self.name = name
        self.stem = stem
        self.bundled = False
        self.thing = "the data set"
        self.record = record

    def check_not_empty(self) -> None:
        if len(self.table) == 0:
            raise DataError("has no rows", file=self.name)

    def peek(self) -> _Peek:
        self.check_not_empty()
        return _Peek("parquet", list(self.table.column_names), dict(self.table[0]), "the columns")

    def generic_layout(self) -> Layout:
        return LAYOUTS["parquet"]

    def rows(self, layout: Layout) -> Rows:
        return Rows(lambda: enumerate(self.table), list(self.table.column_names), None, "row", False)

    def top(self, rows: Rows) -> _Top:
        return _Top(list(self.table.column_names), None, True)


_Source = _FileSource | TableSource


def _guess_fields(peek: _Peek) -> FieldMap | None:
    """A field map for a file no layout fits, when its keys say which is which; else None."""
    sample = peek.sample or {}
    question = next((k for k in _QUESTION_GUESSES if k in peek.keys), None)
    listed = [k for k in peek.keys if isinstance(sample.get(k), list | dict)]
    answers = answer_candidates(peek.keys)
    if question is None or len(listed) != 1 or len(answers) != 1:
        return None
    return FieldMap(question=question, choices=listed[0], answer=answers[0])


def _unknown(file: str, peek: _Peek) -> DataError:
    what = {"the first row": "the first row's keys", "the header": "the header's columns"}.get(
        peek.where, peek.where
    )
    shown = ", ".join(sorted(peek.keys)[:20]) or "none"
    guess = _guess_fields(peek)
    fields = (
        f"`{guess.flags()}`"
        if guess
        else "--field question=COLUMN --field choices=COLUMN --field answer=COLUMN"
    )
    return DataError(
        f"cannot detect the format: {what} ({shown}) match no known layout; pass --format (one of: "
        f"{FORMAT_CHOICES}), or name the fields: {fields}",
        file=file,
    )


def _detect(source: _Source, user: FieldMap) -> Layout:
    file = source.name
    peek = source.peek()
    layout = detect_layout(peek.keys, peek.sample, peek.kind, file, peek.where)
    if layout is None:
        raise _unknown(file, peek)
    if not layout.answer_from_keys and user.answer is None:
        own = layout.fields(peek.keys).answer
        others = [c for c in answer_candidates(peek.keys) if c != own and c not in layout.also_answers]
        if others and own in peek.keys:
            raise DataError(
                f"ambiguous format: {peek.where} has {layout.looks_like} with the answer in '{own}', and "
                f"another answer field '{others[0]}'; pass `--format {layout.name}` to read the answer from "
                f"'{own}' (formats: {FORMAT_CHOICES})",
                file=file,
            )
    return layout


def detect_format(path: str | os.PathLike[str]) -> str:
    """Pick a format from the extension and the first row, so users rarely need ``--format``.

    ``opa..opd`` rows are always taken as the 0-based HF MedMCQA schema; raw upstream files (1-based
    ``cop``) need ``--format medmcqa-raw``. Raises :class:`DataError` when the layout is unknown or
    ambiguous, listing the ``--format`` choices.
    """
    return _detect(_FileSource(path), FieldMap()).name


# ------------------------------------------------------------------------------------ field checks


def _format_hint(source: _Source, fmt: str) -> str:
    """'; the file looks like X' when detection confidently names another format, else ''."""
    try:
        guess = _detect(source, FieldMap()).name
    except DataError:
        return ""
    if guess == fmt or {guess, fmt} <= {"medmcqa", "medmcqa-raw"}:
        return ""
    return f"; {source.thing} looks like '{guess}' (try --format {guess}, or auto)"


def _plural(names: list[str]) -> str:
    return "s" * (len(names) > 1) + " " + ", ".join(f"'{c}'" for c in names)


def _check_fields(
    source: _Source,
    layout: Layout,
    fm: FieldMap,
    user: FieldMap,
    top: _Top,
    required: list[str],
) -> None:
    """Stop before any row is read when the map names a field the file lacks, or leaves one unmapped."""
    if not top.keys:
        return  # nothing readable at the top: the row loop reports why, line by line
    file = source.name
    keys, line = top.keys, top.line
    listed = f"({'columns' if top.is_header else 'keys'}: {', '.join(keys)})"
    for key, value in user.columns().items():
        for column in value if isinstance(value, tuple) else (value,):
            if column not in keys:
                where = f"{source.thing} has no column" if top.is_header else "the first row has no field"
                raise DataError(
                    f"--field {key}={column}: {where} '{column}' {listed}", file=file, line=line, field=column
                )
    missing = [c for c in required if c not in keys]
    if not missing:
        return
    key = fm.field_of(missing[0])
    found = [c for c in answer_candidates(keys) if key == "answer" and c != missing[0]]
    flag = f"; name it with --field {key}={found[0] if found else 'COLUMN'}"
    if top.is_header:
        raise DataError(
            f"missing column{_plural(missing)} {listed}{_format_hint(source, layout.name)}; pass the right "
            f"--format{flag}",
            file=file,
            line=line,
            field=missing[0],
        )
    hint = _format_hint(source, layout.name)
    if hint or user.columns():
        # An explicit format or map that does not fit the file at all would otherwise give one "missing
        # field" per row; say once what the file looks like instead.
        raise DataError(
            f"format '{layout.name}' needs field{_plural(missing)}, which the first row lacks {listed}"
            f"{hint or flag}",
            file=file,
            line=None if hint else line,
            field=missing[0],
        )


def _as_integer(value: Any) -> int | None:
    """An answer's integer, whichever way the file stores it; None for letters, text and the like."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and INT_RE.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _possible_bases(rows: Rows, fm: FieldMap, ctx: Ctx) -> list[int]:
    """The bases the file's integer answers allow: [0], [1], [0, 1] (cannot tell) or [] (none are integers).

    A 0 only exists 0-based; an answer equal to its row's number of options only exists 1-based.
    """
    assert fm.answer is not None
    seen = one_based = False
    for line, data in rows.read():
        if isinstance(data, Problem):
            continue
        index = _as_integer(data.get(fm.answer))
        if index is None:
            continue
        seen = True
        if index == 0:
            return [0]
        items = choice_items(Row(ctx, line, data), fm)
        one_based = one_based or (items is not None and index == len(items))
    if one_based:
        return [1]
    return [0, 1] if seen else []


def _alternatives(user: FieldMap, answer: str, bases: list[int]) -> list[str]:
    """The flags that read ``answer`` in each possible base, as quoted command-line fragments."""
    base_needed = user.answer_base is None and bases
    return [
        f"`{dataclasses.replace(user, answer=answer, answer_base=base).flags()}`"
        for base in (bases if base_needed else [user.answer_base])
    ]


def _answer_column(
    file: str, fm: FieldMap, user: FieldMap, keys: list[str], rows: Rows, ctx: Ctx
) -> FieldMap:
    """The generic layouts' answer is whichever recognised answer column the file has; two is an error."""
    found = answer_candidates(keys)
    if len(found) == 1 and found[0] != fm.answer:
        return dataclasses.replace(fm, answer=found[0], answer_base=user.answer_base)
    if len(found) < 2:
        return fm
    options = []
    for name in found:
        trial = dataclasses.replace(fm, answer=name, answer_base=user.answer_base)
        bases = _possible_bases(rows, trial, ctx) if trial.answer_base is None else []
        options += _alternatives(user, name, bases)
    raise DataError(
        f"ambiguous answer field: the file has {' and '.join(repr(n) for n in found)}; pass "
        + " or ".join(options),
        file=file,
        field=found[0],
    )


def _answer_base(file: str, fm: FieldMap, user: FieldMap, rows: Rows, ctx: Ctx) -> FieldMap:
    """Read integer answers in the base the data shows, or stop with the flags for each base."""
    if fm.answer_base is not None or fm.answer is None:
        return fm
    bases = _possible_bases(rows, fm, ctx)
    if len(bases) == 2:
        first, second = _alternatives(user, fm.answer, bases)
        raise DataError(
            f"answer field '{fm.answer}' holds integers that could be 0- or 1-based (no answer is 0 and "
            f"none equals its row's number of options); pass {first} if 0 is the first option, or {second} "
            "if 1 is",
            file=file,
            field=fm.answer,
        )
    return dataclasses.replace(fm, answer_base=bases[0] if bases else 0)


# ------------------------------------------------------------------------------------------ loading


def _layout_named(name: str) -> Layout:
    if name in LAYOUTS:
        return LAYOUTS[name]
    close = difflib.get_close_matches(name, FORMATS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(f"unknown format {name!r}{hint}; choose one of: auto, {FORMAT_CHOICES}")


def _auto_layout(source: _Source, user: FieldMap) -> Layout:
    try:
        return _detect(source, user)
    except DataError:
        if not user.columns():
            raise
        # The user named the fields: read the file as the generic layout of its extension.
        return source.generic_layout()


def _is_bundled_file(p: Path) -> bool:
    return p.resolve().is_relative_to(BUNDLED_DIR.resolve())


def open_source(source: Any) -> _Source:
    """A loader source from a path, a data reference (``reference.DataRef``: files, bundled sets,
    saved and hub data sets) or an opened source."""
    if isinstance(source, _FileSource | TableSource):
        return source
    if hasattr(source, "open_source"):  # a DataRef (imported lazily: it imports this module)
        return source.open_source()
    return _FileSource(source)


def read_examples(
    path: Any,
    format: str,
    *,
    on_bad_rows: str,
    field_map: FieldMap | None,
    limit: int | None,
    require_answer: bool,
) -> LoadResult:
    """Every good example and every problem; ``load_examples`` and ``check_file`` decide what to raise."""
    if on_bad_rows not in ("error", "skip"):
        raise DataError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    source = open_source(path)
    file = source.name
    # A user's map describes their own files; the bundled ones always load with their known layout.
    user = FieldMap() if field_map is None or source.bundled else field_map
    auto = format == "auto"
    if auto:
        source.check_not_empty()
        layout = _auto_layout(source, user)
    else:
        layout = _layout_named(format)

    rows = source.rows(layout)
    top = source.top(rows)
    fm = user.over(layout.fields(top.keys))
    ctx = Ctx(
        file=file,
        stem=source.stem,
        unit=rows.unit,
        untyped=rows.untyped,
        require_answer=require_answer,
        auto=auto,
        strip_query_prefix=fm.strip_query_prefix,
    )
    if auto and layout.answer_from_keys and user.answer is None:
        fm = _answer_column(file, fm, user, top.keys, rows, ctx)
    _check_fields(source, layout, fm, user, top, fm.required_fields(require_answer))
    # Digit strings are read as indices once the base is known from the user or the data (not assumed).
    ctx.digit_strings = rows.untyped or fm.answer_base is None or user.answer_base is not None
    fm = _answer_base(file, fm, user, rows, ctx)
    result = _convert_rows(rows, layout, fm, ctx, limit)
    if auto and limit is None and layout.check_loaded is not None:
        result.warnings += layout.check_loaded(result.examples, file)
    result.source = source.record
    return result


def _convert_rows(rows: Rows, layout: Layout, fm: FieldMap, ctx: Ctx, limit: int | None) -> LoadResult:
    """Every row through the layout's converter: good examples, problems, warnings (duplicate ids)."""
    file = ctx.file
    examples: list[MCQExample] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    skipped = 0
    any_rows = False
    first_line_of_id: dict[str, int] = {}
    for line, item in rows.read():
        any_rows = True
        if isinstance(item, Problem):
            item.unit = ctx.unit
            problems.append(item)
            skipped += 1
            continue
        example, row_problems, row_warnings = layout.convert(Row(ctx, line, item), fm)
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
            "file is empty" if rows.header_line is None else "no data rows after the header", file=file
        )
    return LoadResult(
        examples=examples, problems=problems, format=layout.name, skipped=skipped, warnings=warnings
    )


def load_examples(
    path: Any,
    format: str = "auto",
    *,
    on_bad_rows: str = "error",
    field_map: FieldMap | None = None,
    limit: int | None = None,
    require_answer: bool = True,
) -> LoadResult:
    """Load and validate a data file, or any source a ``DataRef`` names (bundled, saved or hub data set).

    ``on_bad_rows="error"`` scans the whole file and raises one :class:`DataError` listing every problem
    (a user fixing a file wants them all at once); ``"skip"`` drops bad rows and records them.
    ``limit`` stops after that many good examples. ``require_answer=False`` accepts rows without a gold
    answer (``answer=None``) for prediction. ``field_map`` names the user's own columns (not applied to
    the bundled files). A load that leaves no usable example raises.
    """
    source = open_source(path)
    result = read_examples(
        source,
        format,
        on_bad_rows=on_bad_rows,
        field_map=field_map,
        limit=limit,
        require_answer=require_answer,
    )
    file = source.name
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
        level = logging.INFO if source.bundled else logging.WARNING
        log.log(
            level, "%s: %d warning(s), rows kept (first: %s)", file, len(result.warnings), result.warnings[0]
        )
    return result
