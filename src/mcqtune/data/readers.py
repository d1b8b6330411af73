"""Row readers: JSONL, CSV (with or without header) and parquet rows, each with where it came from.

JSONL and CSV are read line by line with :mod:`json` and :mod:`csv` rather than through ``datasets``:
that is the only way to report the exact 1-based line of a bad row (an invalid JSON line, a ragged CSV
row, a non-UTF-8 byte) instead of failing the whole file inside Arrow. Parquet has no lines, so it is read
with ``datasets`` and problems carry the 0-based row index (shown as ``file:row N``). CSV line numbers are
physical file lines: the header is line 1, the first data row line 2 (a quoted multi-line cell reports the
line its record starts on).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcqtune.errors import DataError, Problem

MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
READERS = ("jsonl", "csv", "parquet", "mmlu-csv")
_DETECT_SCAN_LINES = 100


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def reader_for(path: Path) -> str:
    """The container a file's extension says it is (JSONL unless .csv or .parquet)."""
    return {".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower(), "jsonl")


RowItem = tuple[int, "dict[str, Any] | Problem"]


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


def _read_jsonl(path: Path, file: str) -> Iterator[RowItem]:
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
            yield n, Problem(file, n, None, f"expected a JSON object, got {type_name(obj)}{hint}")
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


def _read_csv_header(path: Path, file: str) -> tuple[list[str], int, Iterator[RowItem]]:
    records = _csv_records(path, file)
    first = next(records, None)
    if first is None:
        raise DataError("file is empty", file=file)
    header_line, header = first
    if isinstance(header, Problem):
        raise DataError.from_problem(header)
    columns = [c.strip() for c in header]

    def rows() -> Iterator[RowItem]:
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


def _read_mmlu_csv(path: Path, file: str) -> Iterator[RowItem]:
    for n, cells in _csv_records(path, file):
        if isinstance(cells, Problem):
            yield n, cells
        elif len(cells) != len(MMLU_COLUMNS):
            yield n, Problem(file, n, None, f"expected 6 cells (question,A,B,C,D,answer), got {len(cells)}")
        else:
            yield n, dict(zip(MMLU_COLUMNS, cells, strict=True))


def _read_parquet(path: Path, file: str) -> tuple[list[str], Any]:
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
    return list(ds.column_names), ds


def first_object(p: Path, file: str) -> tuple[int, dict[str, Any]] | None:
    """The first JSON object among the first lines and its line (bad lines are the loader's to report).

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
            return n, obj
    if bad:
        raise DataError.from_problem(bad[min(bad)])
    return None


def first_csv_record(p: Path, file: str) -> list[str] | None:
    """The first readable CSV record; an encoding problem before it is raised, as for JSONL."""
    for _, cells in _csv_records(p, file):
        if not isinstance(cells, Problem):
            return cells
        if cells.reason.startswith("not valid UTF-8"):
            raise DataError.from_problem(cells)
    return None


def first_parquet_row(p: Path, file: str) -> tuple[list[str], dict[str, Any] | None]:
    """The column names and the first row (None for an empty file), without reading the whole file."""
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(p)
        names = list(handle.schema_arrow.names)
        batch = next(handle.iter_batches(batch_size=1), None)
    except Exception as exc:  # a corrupt file is the user's to fix
        raise DataError(f"cannot read as parquet: {exc}", file=file) from exc
    rows = batch.to_pylist() if batch is not None else []
    return names, (rows[0] if rows else None)


@dataclass
class Rows:
    """A file's rows, readable more than once (the answer base may need a first pass)."""

    read: Callable[[], Iterator[RowItem]]
    columns: list[str] | None  # CSV header / parquet schema; None for JSONL (rows have their own keys)
    header_line: int | None
    unit: str  # "line" or "row" (parquet)
    untyped: bool  # CSV: every value is a string


def open_rows(p: Path, file: str, reader: str) -> Rows:
    if reader == "jsonl":
        return Rows(lambda: _read_jsonl(p, file), None, None, "line", False)
    if reader == "mmlu-csv":
        return Rows(lambda: _read_mmlu_csv(p, file), list(MMLU_COLUMNS), None, "line", True)
    if reader == "csv":
        columns, header_line, _ = _read_csv_header(p, file)
        return Rows(lambda: _read_csv_header(p, file)[2], columns, header_line, "line", True)
    columns, table = _read_parquet(p, file)
    return Rows(lambda: enumerate(table), columns, None, "row", False)
