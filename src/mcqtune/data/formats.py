"""Every data layout in one registry: how it is recognised, which fields it reads, how a row converts.

To add a layout, write its converter (or reuse ``_convert_generic``) and add one :class:`Layout` to
``LAYOUTS``; detection, ``--format`` choices, field checks and error messages all read the registry.

- ``medmcqa``: the Hugging Face MedMCQA schema (``opa..opd``, ``cop`` **0-based**).
- ``medmcqa-raw``: the upstream MedMCQA release, same fields but ``cop`` is **1-based** (1-4). Auto-detection
  always assumes the HF schema for ``opa..opd`` rows and never shifts answers on its own; a row with
  ``cop == 4`` (impossible 0-based) stops the load with a message pointing at ``--format medmcqa-raw``.
- ``arc``: ``allenai/ai2_arc`` (``choices: {text, label}``, ``answerKey`` matched against the labels, which
  are digits for some upstream rows). The nested upstream ARC/OpenBookQA JSONL (``question: {stem,
  choices}``) is read too.
- ``openbookqa``: ``allenai/openbookqa`` (``question_stem`` + ARC's ``choices`` and ``answerKey``).
- ``medqa``: MedQA (``question``, ``options: {A: .., B: ..}``, ``answer_idx`` letter, or ``answer`` text).
- ``lm-eval``: lm-evaluation-harness / llm-foundry ``{query, choices, gold}`` (``gold`` 0-based);
  ``--strip-query-prefix`` drops the ``Question:`` / ``Answer:`` the query is wrapped in.
- ``mmlu-csv``: the original headerless MMLU CSV ``question,A,B,C,D,answer-letter``; the subject is the
  file stem without ``_val``/``_test``/``_dev``.
- ``jsonl``, ``csv`` (with header), ``parquet``: generic rows, ``question`` + ``choices`` (or option
  columns ``A``, ``B``, ...) + one answer column of ``ANSWER_FIELDS``; a field map names other columns.

Layouts without a fixed reader may come from ``.jsonl``, ``.csv`` or ``.parquet`` (chosen by extension).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mcqtune.data.examples import LETTERS, MAX_OPTIONS, MCQExample
from mcqtune.data.fields import ANSWER_FIELDS, FieldMap
from mcqtune.data.readers import MMLU_COLUMNS, type_name
from mcqtune.data.rows import INT_RE, MISSING, Converted, Row, finish, letters_for, short
from mcqtune.errors import DataError, Problem

_MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")
_MMLU_SUFFIXES = ("_val", "_test", "_dev")

Keys = Sequence[str]
Sample = dict[str, Any] | None  # the first row, where the reader has typed values (not CSV)


# --------------------------------------------------------------------------------------- converters


def _convert_medmcqa(row: Row, fm: FieldMap) -> Converted:
    one_based = fm.answer_base == 1
    assert fm.question is not None and isinstance(fm.choices, tuple) and fm.answer is not None
    question = row.text(fm.question, row.get(fm.question), "question")
    items = [(k, LETTERS[i], row.get(k)) for i, k in enumerate(fm.choices)]
    choices = None if any(v is MISSING for _, _, v in items) else row.options(items)
    cop_field = fm.answer
    cop = row.get(cop_field, required=False)
    answer = None
    if row.is_absent(cop):
        row.missing_answer(cop_field, cop)
    elif not one_based and not row.ctx.require_answer and cop == -1:
        pass  # the HF test split marks unlabelled rows with cop = -1
    else:
        value = row.integer(cop_field, cop, digit_strings=row.ctx.untyped)
        if value is not None and not one_based and value == 4 and row.ctx.auto:
            raise DataError(
                "cop=4 is impossible in the 0-based Hugging Face MedMCQA schema that auto-detection assumes; "
                "this looks like a raw upstream file with 1-based cop: pass --format medmcqa-raw "
                "(or format='medmcqa-raw')",
                file=row.ctx.file,
                line=row.line,
                field=cop_field,
                unit=row.ctx.unit,
            )
        if value is not None and choices is not None:
            if one_based:
                hint = "; HF-schema files are 0-based: use --format medmcqa" if value == 0 else ""
            else:
                hint = (
                    "; raw upstream MedMCQA files are 1-based: use --format medmcqa-raw" if value == 4 else ""
                )
            answer = row.index_in_range(cop_field, value, len(choices), 1 if one_based else 0, hint)
    if choices is not None:
        row.check_duplicates(items, choices, answer)
    return finish(row, fm, question, choices, answer)


def _convert_arc(row: Row, fm: FieldMap) -> Converted:
    assert fm.question is not None and isinstance(fm.choices, str) and fm.answer is not None
    raw_q = row.get(fm.question)
    if isinstance(raw_q, dict) and "stem" in raw_q:
        # Upstream ARC/OpenBookQA JSONL nests the options: question: {stem, choices: [{text, label}, ...]}.
        question = row.text(f"{fm.question}.stem", raw_q.get("stem"), "question")
        raw_choices = raw_q.get("choices")
        if not isinstance(raw_choices, list) or not all(isinstance(c, dict) for c in raw_choices):
            row.problem(
                f"{fm.question}.choices",
                f"expected a list of {{text, label}} objects, got {type_name(raw_choices)}",
            )
            texts: Any = None
            labels: Any = None
        else:
            texts = [c.get("text") for c in raw_choices]
            labels = [c.get("label") for c in raw_choices]
        text_field, label_field = f"{fm.question}.choices.text", f"{fm.question}.choices.label"
    else:
        question = row.text(fm.question, raw_q, "question")
        raw_choices = row.get(fm.choices)
        texts = labels = None
        text_field, label_field = f"{fm.choices}.text", f"{fm.choices}.label"
        if raw_choices is MISSING:
            pass
        elif not isinstance(raw_choices, dict):
            row.problem(
                fm.choices,
                f"expected an object with 'text' and 'label' lists, got {type_name(raw_choices)}",
            )
        else:
            texts, labels = raw_choices.get("text", MISSING), raw_choices.get("label", MISSING)
            for name, value in (("text", texts), ("label", labels)):
                if value is MISSING:
                    row.problem(f"{fm.choices}.{name}", "missing required field")
                elif not isinstance(value, list):
                    row.problem(f"{fm.choices}.{name}", f"expected a list, got {type_name(value)}")
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

    key = row.get(fm.answer, required=False)
    answer = None
    if row.is_absent(key) or (isinstance(key, str) and not key.strip()):
        row.missing_answer(fm.answer, key)
    elif choices is not None:
        key_str = str(key).strip()
        if key_str in label_strs:
            answer = label_strs.index(key_str)
        else:
            row.problem(fm.answer, f"answer {short(key_str)} not among labels {', '.join(label_strs)}")
    if choices is not None:
        row.check_duplicates(items, choices, answer)
    return finish(row, fm, question, choices, answer)


def _parse_list_cell(row: Row, fld: str, value: Any) -> list[Any] | None:
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
            row.problem(fld, f'expected a JSON list of options like ["a", "b"], got {short(text)}')
            return None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        row.problem(fld, f"expected a list of options, got {type_name(value)} {short(value)}")
        return None
    return value


def _lettered_items(row: Row, fld: str, raw: dict[Any, Any]) -> list[tuple[str, str, Any]] | None:
    """MedQA's ``{A: text, B: text, ...}``: the keys must be the letters A, B, ... (any order)."""
    by_letter = {str(k).strip().upper(): v for k, v in raw.items()}
    expected = LETTERS[: len(by_letter)]
    if sorted(by_letter) != list(expected) or len(by_letter) > MAX_OPTIONS:
        row.problem(
            fld,
            f"option keys must be the letters {letters_for(len(expected))}, got {', '.join(map(str, raw))}",
        )
        return None
    return [(fld, letter, by_letter[letter]) for letter in expected]


def choice_items(row: Row, fm: FieldMap) -> list[tuple[str, str, Any]] | None:
    """``(field, letter, value)`` per option from option columns, a list, or a ``{letter: text}`` object."""
    if isinstance(fm.choices, tuple):
        values = [(col, LETTERS[i], row.get(col)) for i, col in enumerate(fm.choices)]
        return values if all(v is not MISSING for _, _, v in values) else None
    assert fm.choices is not None
    raw = row.get(fm.choices)
    if raw is MISSING:
        return None
    if isinstance(raw, dict):
        return _lettered_items(row, fm.choices, raw)
    listed = _parse_list_cell(row, fm.choices, raw)
    if listed is None:
        return None
    return [(fm.choices, LETTERS[i % MAX_OPTIONS], v) for i, v in enumerate(listed)]


def _generic_answer(row: Row, fm: FieldMap, choices: tuple[str, ...], letters_only: bool) -> int | None:
    assert fm.answer is not None
    fld = fm.answer
    n = len(choices)
    base = fm.answer_base or 0  # None only when the file has no integer answers to read
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
            row.problem(fld, f"answer {short(text)} is not a letter A-{LETTERS[n - 1]}")
            return None
        if INT_RE.fullmatch(text):
            if row.ctx.digit_strings or base == 1:
                return row.index_in_range(fld, int(text), n, base)
            row.problem(
                fld,
                f"answer {short(text)} is a string of digits; store an integer index, a letter, "
                "or pass --answer-base 0 or 1 to read digits in that base (answer_base=1: 1-based labels)",
            )
            return None
        matches = [i for i, option in enumerate(choices) if option.casefold() == text.casefold()]
        if len(matches) == 1:
            return matches[0]  # MedQA's ``answer`` holds the right option's text
        row.problem(
            fld, f"answer {short(text)} is neither an integer index nor a letter A-J nor one option's text"
        )
        return None
    if letters_only:
        row.problem(fld, f"answer must be a letter, got {type_name(value)} {short(value)}")
        return None
    index = row.integer(fld, value, digit_strings=False)
    return None if index is None else row.index_in_range(fld, index, n, base)


def _convert_generic(
    row: Row, fm: FieldMap, subject: str | None = None, letters_only: bool = False
) -> Converted:
    assert fm.question is not None and fm.answer is not None
    question = row.text(fm.question, row.get(fm.question), "question")
    found = choice_items(row, fm)
    choices = row.options(found) if found is not None else None
    items = found or []
    answer = None
    if choices is not None:
        answer = _generic_answer(row, fm, choices, letters_only)
        row.check_duplicates(items, choices, answer)
    elif fm.answer not in row.data and row.ctx.require_answer:
        row.problem(fm.answer, "missing required field")
    return finish(row, fm, question, choices, answer, subject)


def _mmlu_subject(stem: str) -> str:
    for suffix in _MMLU_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _convert_mmlu(row: Row, fm: FieldMap) -> Converted:
    subject = None if fm.subject is not None else _mmlu_subject(row.ctx.stem)
    return _convert_generic(row, fm, subject=subject, letters_only=True)


# ------------------------------------------------------------------------------------ default fields


def option_columns(keys: Keys) -> tuple[str, ...]:
    """Option columns ``A``, ``B``, ... in order (empty when there are fewer than two)."""
    cols: list[str] = []
    for letter in LETTERS:
        if letter not in keys:
            break
        cols.append(letter)
    return tuple(cols) if len(cols) > 1 else ()


def answer_candidates(keys: Keys) -> list[str]:
    """The recognised answer columns a file has, in ``ANSWER_FIELDS`` order."""
    return [name for name in ANSWER_FIELDS if name in keys]


def _generic_fields(keys: Keys) -> FieldMap:
    """``question`` + ``choices`` (or A, B, ... columns) + ``answer`` (0-based integers or letters)."""
    choices: str | tuple[str, ...] = "choices" if "choices" in keys else option_columns(keys) or "choices"
    return FieldMap("question", choices, "answer", 0, "id")


def _medqa_fields(keys: Keys) -> FieldMap:
    return FieldMap("question", "options", "answer_idx" if "answer_idx" in keys else "answer", None, "id")


def _no_zero_cop(examples: list[MCQExample], file: str) -> list[Problem]:
    """A 1-based raw MedMCQA file read as the 0-based HF schema has no cop=0 at all: say so."""
    answers = [e.answer for e in examples if e.answer is not None]
    if len(answers) < 50 or 0 in answers:
        return []
    return [
        Problem(
            file,
            None,
            "cop",
            f"no row has cop=0 among {len(answers)} labelled rows; if this is a raw upstream "
            "MedMCQA file (1-based cop), pass --format medmcqa-raw",
            "warning",
        )
    ]


def _fixed(fields: FieldMap) -> Callable[[Keys], FieldMap]:
    return lambda keys: fields


# ---------------------------------------------------------------------------------------- detection


def _is_medmcqa(keys: Keys, sample: Sample) -> bool:
    return {"opa", "opb"} <= set(keys)  # not all four: a row missing one is the loader's to report


def _is_arc(keys: Keys, sample: Sample) -> bool:
    if sample is None:
        return False
    choices = sample.get("choices")
    return isinstance(sample.get("question"), dict) or (
        "question" in keys and isinstance(choices, dict) and "text" in choices
    )


def _is_openbookqa(keys: Keys, sample: Sample) -> bool:
    return sample is not None and "question_stem" in keys and isinstance(sample.get("choices"), dict)


def _is_medqa(keys: Keys, sample: Sample) -> bool:
    return sample is not None and "question" in keys and isinstance(sample.get("options"), dict)


def _is_lm_eval(keys: Keys, sample: Sample) -> bool:
    return {"query", "choices", "gold"} <= set(keys)


def looks_like_mmlu(cells: Keys) -> bool:
    if len(cells) != len(MMLU_COLUMNS) or cells[-1].strip() not in ("A", "B", "C", "D"):
        return False
    header_words = {"question", "prompt", "answer", "label", "id"}
    return cells[0].strip().lower() not in header_words


def _is_mmlu(keys: Keys, sample: Sample) -> bool:
    return looks_like_mmlu(keys)


def _is_generic(keys: Keys, sample: Sample) -> bool:
    return "question" in keys and ("choices" in keys or bool(option_columns(keys)))


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Layout:
    """One data layout: what it looks like, the fields it reads and how a row becomes an example."""

    name: str
    looks_like: str  # for messages: "MedMCQA fields (opa..opd)"
    fields: Callable[[Keys], FieldMap]  # its own field names, given the file's keys or columns
    convert: Callable[[Row, FieldMap], Converted]
    detect: Callable[[Keys, Sample], bool] | None  # None: only by --format
    reader: str | None = None  # a fixed reader ("jsonl", "csv", "parquet", "mmlu-csv"); None: by extension
    fallback: bool = False  # detected only when no specific layout matches
    answer_from_keys: bool = False  # the answer is whichever recognised answer column the file has
    also_answers: tuple[str, ...] = ()  # answer-like columns the layout knowingly ignores
    # A whole-file check after an auto-detected full load: (examples, file) -> warnings.
    check_loaded: Callable[[list[MCQExample], str], list[Problem]] | None = None


def _generic(reader: str) -> Layout:
    """The generic layout read from one kind of file (``--format jsonl``/``csv``/``parquet``)."""
    return Layout(
        reader,
        "generic fields (question, choices)",
        _generic_fields,
        _convert_generic,
        _is_generic,
        reader=reader,
        fallback=True,
        answer_from_keys=True,
    )


_MEDMCQA_FIELDS = FieldMap("question", _MEDMCQA_OPTIONS, "cop", 0, "id", "subject_name")

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "medmcqa",
            "MedMCQA fields (opa..opd)",
            _fixed(_MEDMCQA_FIELDS),
            _convert_medmcqa,
            _is_medmcqa,
            check_loaded=_no_zero_cop,
        ),
        Layout(
            "medmcqa-raw",
            "MedMCQA fields (opa..opd)",
            _fixed(FieldMap(**{**_MEDMCQA_FIELDS.columns(), "answer_base": 1})),
            _convert_medmcqa,
            None,
        ),
        Layout(
            "arc",
            "ARC fields (choices.text/answerKey)",
            _fixed(FieldMap("question", "choices", "answerKey", 0, "id")),
            _convert_arc,
            _is_arc,
        ),
        Layout(
            "openbookqa",
            "OpenBookQA fields (question_stem, choices.text/answerKey)",
            _fixed(FieldMap("question_stem", "choices", "answerKey", 0, "id")),
            _convert_arc,
            _is_openbookqa,
        ),
        Layout(
            "medqa",
            "MedQA fields (options: {A: ..}, answer_idx)",
            _medqa_fields,
            _convert_generic,
            _is_medqa,
            also_answers=("answer",),
        ),
        Layout(
            "lm-eval",
            "lm-evaluation-harness fields (query, choices, gold)",
            _fixed(FieldMap("query", "choices", "gold", 0, "id")),
            _convert_generic,
            _is_lm_eval,
        ),
        Layout(
            "mmlu-csv",
            "a headerless MMLU row (question,A,B,C,D,letter)",
            _fixed(FieldMap("question", ("A", "B", "C", "D"), "answer", 0)),
            _convert_mmlu,
            _is_mmlu,
            reader="mmlu-csv",
        ),
        _generic("jsonl"),
        _generic("csv"),
        _generic("parquet"),
    )
}
FORMATS = tuple(LAYOUTS)
FORMAT_CHOICES = ", ".join(FORMATS)


def file_kind(layout: Layout) -> str | None:
    """The kind of file (by extension) a layout can be detected in; None: any."""
    return "csv" if layout.reader == "mmlu-csv" else layout.reader


def detect_layout(keys: Keys, sample: Sample, kind: str, file: str, where: str) -> Layout | None:
    """The one layout that fits ``keys``; None when none does, DataError when several do."""
    usable = [lay for lay in LAYOUTS.values() if lay.detect and file_kind(lay) in (None, kind)]
    found = [lay for lay in usable if not lay.fallback and lay.detect(keys, sample)]  # type: ignore[misc]
    if not found:
        found = [lay for lay in usable if lay.fallback and lay.detect(keys, sample)]  # type: ignore[misc]
    if len(found) > 1:
        raise DataError(
            f"ambiguous format: {where} has both {found[0].looks_like} and {found[1].looks_like}; "
            f"pass --format (one of: {FORMAT_CHOICES})",
            file=file,
        )
    return found[0] if found else None
