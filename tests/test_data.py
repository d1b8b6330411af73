"""Tests for the data stage: bundled files, every format, and one case per kind of bad row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcqtune.data import (
    FORMATS,
    LETTERS,
    DataError,
    DataReport,
    FieldMap,
    MCQExample,
    Problem,
    answer_distribution,
    bundled_path,
    check_file,
    detect_format,
    load_examples,
    majority_baseline,
    resolve_data,
)

FIXTURES = Path(__file__).parent / "fixtures"


def med_row(i: int = 0, cop: Any = 1, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"m{i}",
        "question": f"Question {i}?",
        "opa": "alpha",
        "opb": "beta",
        "opc": "gamma",
        "opd": "delta",
        "cop": cop,
        "choice_type": "single",
        "exp": None,
        "subject_name": "Anatomy",
        "topic_name": None,
    }
    row.update(over)
    return row


def arc_row(i: int = 0, key: Any = "B", labels: list[str] | None = None, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"a{i}",
        "question": f"Arc question {i}?",
        "choices": {"text": ["one", "two", "three", "four"], "label": labels or ["A", "B", "C", "D"]},
        "answerKey": key,
    }
    row.update(over)
    return row


def gen_row(i: int = 0, **over: Any) -> dict[str, Any]:
    row = {"id": f"g{i}", "question": f"Generic {i}?", "choices": ["x", "y", "z"], "answer": 1}
    row.update(over)
    return row


def jsonl_text(rows: list[Any]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_parquet(tmp_path: Path, name: str, columns: dict[str, list[Any]]) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def core(e: MCQExample) -> tuple[Any, ...]:
    return (e.id, e.question, e.choices, e.answer, e.subject)


# ------------------------------------------------------------------------------------------ bundled


@pytest.mark.parametrize(
    ("name", "split", "count", "fmt"),
    [
        ("medmcqa", "train", 3000, "medmcqa"),
        ("medmcqa", "validation", 500, "medmcqa"),
        ("arc_easy", "train", 1876, "arc"),
        ("arc_easy", "validation", 500, "arc"),
    ],
)
def test_bundled_files_load_completely(name: str, split: str, count: int, fmt: str) -> None:
    result = load_examples(bundled_path(name, split))
    assert result.format == fmt
    assert len(result.examples) == count
    assert result.problems == [] and result.skipped == 0
    assert all(len(e.choices) == 4 and e.answer is not None for e in result.examples)
    assert len({e.id for e in result.examples}) == count


def test_bundled_medmcqa_answer_balance_and_fields() -> None:
    examples = load_examples(bundled_path("medmcqa", "train")).examples
    dist = answer_distribution(examples)
    assert list(dist) == ["A", "B", "C", "D"] and sum(dist.values()) == 3000
    letter, share = majority_baseline(examples)
    assert letter == "A"
    assert share == pytest.approx(0.319, abs=0.001)
    first = examples[0]
    assert first.id == "80e16084-d58b-4584-8712-feb0dda14e36"
    assert first.choices[0] == "Fibrous dysplasia" and first.answer == 0 and first.answer_letter == "A"
    assert first.subject == "Pathology"
    assert first.source.endswith("train.jsonl:1")


def test_bundled_duplicate_options_are_warnings_not_errors() -> None:
    result = load_examples(bundled_path("medmcqa", "train"))
    assert len(result.warnings) == 14
    assert all(w.severity == "warning" for w in result.warnings)
    first = result.warnings[0]
    assert first.line == 105 and "duplicate options: C and D" in first.reason
    ambiguous = [w for w in result.warnings if "gold answer" in w.reason]
    assert {w.line for w in ambiguous} == {1268, 2575}


@pytest.mark.parametrize("spec", ["medmcqa", "arc_easy", "arc-easy", "ARC-Easy"])
def test_resolve_data_bundled_names(spec: str) -> None:
    path = resolve_data(spec, "validation")
    assert path.name == "validation.jsonl" and path.is_file()
    assert resolve_data(spec, "train") == bundled_path(spec, "train")


def test_resolve_data_paths_and_errors(tmp_path: Path) -> None:
    f = write(tmp_path, "mine.jsonl", jsonl_text([gen_row()]))
    assert resolve_data(str(f), "train") == f
    with pytest.raises(
        DataError, match=r"neither an existing file nor a bundled dataset.*did you mean 'medmcqa'"
    ):
        resolve_data("medmcq", "train")
    empty = tmp_path / "empty"  # a directory with data files is a data set (tests/test_data_sources.py)
    empty.mkdir()
    with pytest.raises(DataError, match="is a directory"):
        resolve_data(str(empty), "train")
    with pytest.raises(DataError, match="unknown split 'test'"):
        bundled_path("medmcqa", "test")
    with pytest.raises(DataError, match="unknown bundled dataset"):
        bundled_path("squad", "train")


# ------------------------------------------------------------------------------------ named formats


def test_mmlu_fixture() -> None:
    path = FIXTURES / "anatomy_val.csv"
    assert detect_format(path) == "mmlu-csv"
    result = load_examples(path)
    assert result.format == "mmlu-csv" and len(result.examples) == 14
    first = result.examples[0]
    assert first.question.startswith("Which of the following terms describes")
    assert first.choices == ("Anabolism", "Catabolism", "Tolerance", "Homeostasis")
    assert first.answer_letter == "D"
    assert first.subject == "anatomy"
    assert first.id == "anatomy_val-1"
    # a quoted cell with commas stays one option
    assert result.examples[1].choices[2] == "The maxillary artery, retromandibular vein and facial artery"
    assert result.examples[1].answer_letter == "B"


def test_mmlu_subject_strips_split_suffix(tmp_path: Path) -> None:
    text = (FIXTURES / "anatomy_val.csv").read_text(encoding="utf-8")
    path = write(tmp_path, "college_biology_test.csv", text)
    assert {e.subject for e in load_examples(path).examples} == {"college_biology"}


def test_medmcqa_raw_is_one_based_equivalent(tmp_path: Path) -> None:
    lines = bundled_path("medmcqa", "validation").read_text(encoding="utf-8").splitlines()[:60]
    hf_rows = [json.loads(line) for line in lines]
    raw_rows = [dict(r, cop=r["cop"] + 1) for r in hf_rows]
    hf = write(tmp_path, "hf.jsonl", jsonl_text(hf_rows))
    raw = write(tmp_path, "raw.jsonl", jsonl_text(raw_rows))
    hf_examples = load_examples(hf).examples
    raw_result = load_examples(raw, "medmcqa-raw")
    assert raw_result.format == "medmcqa-raw"
    assert [core(e) for e in raw_result.examples] == [core(e) for e in hf_examples]
    assert any(e.answer == 3 for e in raw_result.examples)


def test_medmcqa_auto_refuses_to_guess_raw_files(tmp_path: Path) -> None:
    path = write(tmp_path, "raw_train.json", jsonl_text([med_row(0, 1), med_row(1, 2), med_row(2, 4)]))
    assert detect_format(path) == "medmcqa"
    with pytest.raises(DataError) as info:
        load_examples(path, on_bad_rows="skip")
    msg = str(info.value)
    assert "raw_train.json:3: field 'cop'" in msg and "--format medmcqa-raw" in msg
    # explicit formats are trusted
    assert [e.answer for e in load_examples(path, "medmcqa-raw").examples] == [0, 1, 3]
    with pytest.raises(DataError, match=r"answer index 4 out of range for 4 options.*medmcqa-raw"):
        load_examples(path, "medmcqa")


def test_medmcqa_auto_warns_when_no_zero_answer(tmp_path: Path) -> None:
    path = write(tmp_path, "maybe_raw.jsonl", jsonl_text([med_row(i, 1 + i % 3) for i in range(60)]))
    result = load_examples(path)
    assert any("no row has cop=0" in w.reason for w in result.warnings)


def test_arc_digit_labels_and_upstream_nested_layout(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "arc.jsonl",
        jsonl_text([arc_row(0, "3", labels=["1", "2", "3", "4"]), arc_row(1, "A"), arc_row(2, " D ")]),
    )
    result = load_examples(path)
    assert result.format == "arc"
    assert [e.answer for e in result.examples] == [2, 0, 3]
    assert result.examples[0].answer_letter == "C"
    nested = {
        "id": "up1",
        "question": {
            "stem": "Nested?",
            "choices": [{"text": "no", "label": "A"}, {"text": "yes", "label": "B"}],
        },
        "answerKey": "B",
    }
    up = load_examples(write(tmp_path, "ARC-Easy-Dev.jsonl", jsonl_text([nested])))
    assert core(up.examples[0]) == ("up1", "Nested?", ("no", "yes"), 1, None)


def test_medmcqa_and_arc_from_parquet(tmp_path: Path) -> None:
    rows = [med_row(0, 0), med_row(1, 3)]
    med = write_parquet(tmp_path, "medmcqa-00000.parquet", {k: [r[k] for r in rows] for k in rows[0]})
    assert detect_format(med) == "medmcqa"
    result = load_examples(med)
    assert [e.answer for e in result.examples] == [0, 3]
    assert result.examples[1].source.endswith("medmcqa-00000.parquet:row 1")
    arcs = [arc_row(0, "C"), arc_row(1, "A")]
    arc = write_parquet(tmp_path, "arc.parquet", {k: [r[k] for r in arcs] for k in arcs[0]})
    assert detect_format(arc) == "arc"
    assert [e.answer for e in load_examples(arc).examples] == [2, 0]


# ------------------------------------------------------------------------------------------ generic


def test_generic_jsonl_list_and_index(tmp_path: Path) -> None:
    path = write(tmp_path, "gen.jsonl", jsonl_text([gen_row(0), gen_row(1, answer=2, extra={"x": 1})]))
    result = load_examples(path)
    assert result.format == "jsonl"
    assert [core(e) for e in result.examples] == [
        ("g0", "Generic 0?", ("x", "y", "z"), 1, None),
        ("g1", "Generic 1?", ("x", "y", "z"), 2, None),
    ]


def test_generic_jsonl_columns_letters_and_field_map(tmp_path: Path) -> None:
    rows = [
        {"q": "  Padded?  ", "o1": " a ", "o2": "b", "o3": "c", "gold": "c", "topic": "law"},
        {"q": "Second?", "o1": "a", "o2": "b", "o3": "c", "gold": "A", "topic": None},
    ]
    path = write(tmp_path, "cols.jsonl", jsonl_text(rows))
    fm = FieldMap(question="q", choices=("o1", "o2", "o3"), answer="gold", id=None, subject="topic")
    result = load_examples(path, field_map=fm)
    assert result.format == "jsonl"
    assert [core(e) for e in result.examples] == [
        ("cols-1", "Padded?", ("a", "b", "c"), 2, "law"),
        ("cols-2", "Second?", ("a", "b", "c"), 0, None),
    ]


def test_generic_one_based_answers(tmp_path: Path) -> None:
    path = write(tmp_path, "one.jsonl", jsonl_text([gen_row(0, answer=1), gen_row(1, answer="3")]))
    result = load_examples(path, field_map=FieldMap(answer_base=1))
    assert [e.answer for e in result.examples] == [0, 2]


def test_generic_csv_list_column_and_letter(tmp_path: Path) -> None:
    text = (
        "id,question,choices,answer\n"
        'c1,"Which, with comma?","[""red"", ""green"", ""blue""]",B\n'
        "c2,Python repr list?,\"['x', 'y']\",0\n"
    )
    path = write(tmp_path, "list.csv", text)
    assert detect_format(path) == "csv"
    result = load_examples(path)
    assert result.format == "csv"
    assert [core(e) for e in result.examples] == [
        ("c1", "Which, with comma?", ("red", "green", "blue"), 1, None),
        ("c2", "Python repr list?", ("x", "y"), 0, None),
    ]
    assert result.examples[1].source.endswith("list.csv:3")


def test_generic_csv_option_columns(tmp_path: Path) -> None:
    # A question,A,B,C,D,answer header works without a field map; digits in CSV are indices.
    text = "question,A,B,C,D,answer\nQ1,a,b,c,d,D\nQ2,a,b,c,d,2\n"
    path = write(tmp_path, "cols.csv", text)
    assert detect_format(path) == "csv"
    assert [e.answer for e in load_examples(path).examples] == [3, 2]
    one_based = load_examples(path, field_map=FieldMap(choices=("A", "B", "C", "D"), answer_base=1, id=None))
    assert [e.answer for e in one_based.examples] == [3, 1]


def test_generic_csv_with_bom_and_crlf(tmp_path: Path) -> None:
    content = '\ufeffquestion,choices,answer\r\nQ1,"[""a"",""b""]",1\r\n'.encode()
    result = load_examples(write(tmp_path, "excel.csv", content))
    assert core(result.examples[0]) == ("excel-2", "Q1", ("a", "b"), 1, None)


def test_generic_parquet_list_and_columns(tmp_path: Path) -> None:
    listed = write_parquet(
        tmp_path,
        "list.parquet",
        {
            "id": ["p0", "p1"],
            "question": ["Q0", "Q1"],
            "choices": [["a", "b"], ["c", "d", "e"]],
            "answer": [1, 2],
        },
    )
    assert detect_format(listed) == "parquet"
    result = load_examples(listed)
    assert result.format == "parquet"
    assert [core(e) for e in result.examples] == [
        ("p0", "Q0", ("a", "b"), 1, None),
        ("p1", "Q1", ("c", "d", "e"), 2, None),
    ]
    cols = write_parquet(
        tmp_path,
        "cols.parquet",
        {"stem": ["S0"], "w": ["1"], "x": ["2"], "y": ["3"], "z": ["4"], "key": ["d"]},
    )
    fm = FieldMap(question="stem", choices=("w", "x", "y", "z"), answer="key", id=None)
    assert [core(e) for e in load_examples(cols, field_map=fm).examples] == [
        ("cols-0", "S0", ("1", "2", "3", "4"), 3, None)
    ]


@pytest.mark.parametrize("n", [2, 10])
def test_two_and_ten_options(tmp_path: Path, n: int) -> None:
    options = [f"opt {i}" for i in range(n)]
    path = write(tmp_path, f"n{n}.jsonl", jsonl_text([gen_row(0, choices=options, answer=LETTERS[n - 1])]))
    example = load_examples(path).examples[0]
    assert len(example.choices) == n and example.answer == n - 1 and example.answer_letter == LETTERS[n - 1]
    assert list(answer_distribution([example])) == list(LETTERS[:n])


def test_limit_and_require_answer(tmp_path: Path) -> None:
    path = write(tmp_path, "many.jsonl", jsonl_text([gen_row(i) for i in range(10)]))
    assert len(load_examples(path, limit=3).examples) == 3
    unlabelled = write(tmp_path, "predict.jsonl", jsonl_text([{"question": "Q?", "choices": ["a", "b"]}]))
    result = load_examples(unlabelled, require_answer=False)
    assert result.examples[0].answer is None and result.examples[0].answer_letter is None
    with pytest.raises(DataError, match=r"predict\.jsonl:1: field 'answer': missing required field"):
        load_examples(unlabelled)
    hf_test = write(tmp_path, "test.jsonl", jsonl_text([med_row(0, -1)]))
    assert load_examples(hf_test, require_answer=False).examples[0].answer is None


# ----------------------------------------------------------------------------------------- problems

GOOD_MED = json.dumps(med_row(0))
GOOD_GEN = json.dumps(gen_row(0))
GOOD_ARC = json.dumps(arc_row(0))


def _lines(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


# (case id, file name, content, format, field map, expected line, expected field, reason fragment)
BAD_CASES: list[tuple[str, str, str | bytes, str, FieldMap | None, int | None, str | None, str]] = [
    (
        "invalid-json",
        "bad.jsonl",
        _lines(GOOD_GEN, '{"question": "q",'),
        "auto",
        None,
        2,
        None,
        "invalid JSON",
    ),
    (
        "not-object",
        "bad.jsonl",
        _lines(GOOD_GEN, "", "[1, 2]"),
        "auto",
        None,
        3,
        None,
        "expected a JSON object",
    ),
    (
        "missing-field",
        "med.jsonl",
        _lines(GOOD_MED, json.dumps({k: v for k, v in med_row(1).items() if k != "cop"})),
        "auto",
        None,
        2,
        "cop",
        "missing required field",
    ),
    (
        "missing-option",
        "med.jsonl",
        _lines(json.dumps({k: v for k, v in med_row(1).items() if k != "opc"}), GOOD_MED),
        "auto",
        None,
        1,
        "opc",
        "missing required field",
    ),
    (
        "null-question",
        "med.jsonl",
        _lines(GOOD_MED, json.dumps(med_row(1, question=None))),
        "auto",
        None,
        2,
        "question",
        "question is null",
    ),
    (
        "nan-option",
        "med.jsonl",
        _lines(GOOD_MED, json.dumps(med_row(1, opb=math.nan))),
        "auto",
        None,
        2,
        "opb",
        "option B is NaN",
    ),
    (
        "int-option",
        "med.jsonl",
        _lines(GOOD_MED, json.dumps(med_row(1, opc=7))),
        "auto",
        None,
        2,
        "opc",
        "must be a string",
    ),
    (
        "list-question",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, question=["q"]))),
        "auto",
        None,
        2,
        "question",
        "must be a string",
    ),
    (
        "blank-question",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, question="  \t "))),
        "auto",
        None,
        2,
        "question",
        "question is empty",
    ),
    (
        "empty-option",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, choices=["a", " ", "c"]))),
        "auto",
        None,
        2,
        "choices",
        "option B is empty",
    ),
    (
        "one-option",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, choices=["a"], answer=0))),
        "auto",
        None,
        2,
        "choices",
        "need at least 2",
    ),
    (
        "eleven-options",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, choices=[str(i) for i in range(11)], answer=0))),
        "auto",
        None,
        2,
        "choices",
        "at most 10",
    ),
    (
        "choices-not-list",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, choices="a|b"))),
        "auto",
        None,
        2,
        "choices",
        "expected a list",
    ),
    (
        "cop-out-of-range",
        "med.jsonl",
        _lines(GOOD_MED, json.dumps(med_row(1, cop=5))),
        "auto",
        None,
        2,
        "cop",
        "answer index 5 out of range for 4 options",
    ),
    (
        "negative-index",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, answer=-1))),
        "auto",
        None,
        2,
        "answer",
        "answer index -1 out of range",
    ),
    (
        "letter-beyond",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, answer="D"))),
        "auto",
        None,
        2,
        "answer",
        "answer letter 'D' not among options A-C",
    ),
    (
        "bool-answer",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, answer=True))),
        "auto",
        None,
        2,
        "answer",
        "got boolean",
    ),
    (
        "float-answer",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, answer=1.5))),
        "auto",
        None,
        2,
        "answer",
        "integer index",
    ),
    (
        "word-answer",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, answer="yes"))),
        "auto",
        None,
        2,
        "answer",
        "neither an integer index nor a letter",
    ),
    (
        "digit-string-base0",
        "gen.jsonl",
        _lines(GOOD_GEN, json.dumps(gen_row(1, answer="2"))),
        "auto",
        None,
        2,
        "answer",
        "answer_base=1",
    ),
    (
        "one-based-zero",
        "gen.jsonl",
        _lines(json.dumps(gen_row(1, answer=0))),
        "auto",
        FieldMap(answer_base=1),
        1,
        "answer",
        "1-based: expected 1-3",
    ),
    (
        "cop-string",
        "med.jsonl",
        _lines(GOOD_MED, json.dumps(med_row(1, cop="2"))),
        "auto",
        None,
        2,
        "cop",
        "integer index",
    ),
    (
        "raw-cop-zero",
        "raw.jsonl",
        _lines(json.dumps(med_row(0, cop=0))),
        "medmcqa-raw",
        None,
        1,
        "cop",
        "use --format medmcqa",
    ),
    (
        "arc-key",
        "arc.jsonl",
        _lines(GOOD_ARC, json.dumps(arc_row(1, "E"))),
        "auto",
        None,
        2,
        "answerKey",
        "not among labels A, B, C, D",
    ),
    (
        "arc-label-mismatch",
        "arc.jsonl",
        _lines(GOOD_ARC, json.dumps(arc_row(1, labels=["A", "B", "C"]))),
        "auto",
        None,
        2,
        "choices.label",
        "4 option texts but 3 labels",
    ),
    (
        "arc-choices-type",
        "arc.jsonl",
        _lines(GOOD_ARC, json.dumps(arc_row(1, choices=["a", "b"]))),
        "auto",
        None,
        2,
        "choices",
        "expected an object",
    ),
    (
        "utf8-jsonl",
        "enc.jsonl",
        _lines(GOOD_GEN).encode() + b'{"question": "caf\xe9"}\n',
        "auto",
        None,
        2,
        None,
        "not valid UTF-8",
    ),
    (
        "utf8-csv",
        "enc.csv",
        b'question,choices,answer\nok,"[""a"",""b""]",0\nbad \xff,"[""a"",""b""]",0\n',
        "auto",
        None,
        3,
        None,
        "not valid UTF-8",
    ),
    (
        "csv-ragged",
        "rag.csv",
        'question,choices,answer\nQ,"[""a"",""b""]",0\nQ2,x\n',
        "auto",
        None,
        3,
        None,
        "expected 3 cells",
    ),
    (
        "csv-not-json-list",
        "lst.csv",
        "question,choices,answer\nQ,a;b,0\n",
        "auto",
        None,
        2,
        "choices",
        "expected a JSON list",
    ),
    (
        "csv-empty-column",
        "cols.csv",
        "question,A,B,C,D,answer\nQ,a,b,,d,A\n",
        "auto",
        None,
        2,
        "C",
        "option C is empty",
    ),
    (
        "csv-missing-column",
        "hdr.csv",
        'question,choices,label\nQ,"[1]",0\n',
        "csv",
        None,
        1,
        "answer",
        "missing column 'answer'",
    ),
    ("mmlu-ragged", "law_dev.csv", "Q1?,a,b,c,d,A\nQ2?,a,b,c,d\n", "auto", None, 2, None, "expected 6 cells"),
    (
        "mmlu-letter",
        "law_dev.csv",
        "Q1?,a,b,c,d,A\nQ2?,a,b,c,d,E\n",
        "mmlu-csv",
        None,
        2,
        "answer",
        "answer letter 'E' not among options A-D",
    ),
    ("empty-file", "empty.jsonl", "", "auto", None, None, None, "file is empty"),
    ("blank-lines-only", "blank.jsonl", "\n  \n", "jsonl", None, None, None, "file is empty"),
    (
        "header-only",
        "head.csv",
        "question,choices,answer\n",
        "csv",
        None,
        None,
        None,
        "no data rows after the header",
    ),
    ("json-array", "arr.json", '[{"question": "q"}]\n', "auto", None, 1, None, "JSON array"),
]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "fm", "line", "fld", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CASES],
)
def test_bad_inputs_report_file_line_and_field(
    tmp_path: Path,
    name: str,
    content: str | bytes,
    fmt: str,
    fm: FieldMap | None,
    line: int | None,
    fld: str | None,
    fragment: str,
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        load_examples(path, fmt, field_map=fm)
    err = info.value
    msg = str(err)
    assert name in msg and fragment in msg
    assert err.file == str(path) and err.line == line and err.field == fld
    if line is not None:
        assert f"{name}:{line}:" in msg
    if fld is not None:
        assert f"field '{fld}'" in msg
    assert "\n" not in msg  # one bad row gives one line


def test_parquet_problem_reports_row_index(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path,
        "bad.parquet",
        {"question": ["ok", None], "choices": [["a", "b"], ["a", "b"]], "answer": [0, 1]},
    )
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert "bad.parquet:row 1: field 'question': question is null" in str(info.value)
    assert info.value.line == 1


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        load_examples(tmp_path)
    with pytest.raises(DataError, match=r"unknown format 'mmlu'.*did you mean 'mmlu-csv'"):
        load_examples(FIXTURES / "anatomy_val.csv", "mmlu")


def test_error_mode_lists_all_problems(tmp_path: Path) -> None:
    rows = [json.dumps(gen_row(i, answer=9 if i % 2 else 0)) for i in range(50)]
    path = write(tmp_path, "many_bad.jsonl", _lines(*rows))
    with pytest.raises(DataError) as info:
        load_examples(path)
    err = info.value
    assert len(err.problems) == 25
    msg = str(err)
    first_line = msg.splitlines()[0]
    assert first_line.startswith(f"{path}: 25 bad rows") and "on_bad_rows='skip'" in first_line
    assert "many_bad.jsonl:2: field 'answer': answer index 9 out of range for 3 options" in msg
    assert "... and 5 more" in msg
    assert err.line == 2 and err.field == "answer"


def test_skip_mode_counts(tmp_path: Path) -> None:
    lines = [
        GOOD_GEN,
        "{broken",
        json.dumps(gen_row(2, answer="Z")),
        json.dumps(gen_row(3)),
        json.dumps(gen_row(4, question="", choices=["a", ""])),  # two problems, one row
        json.dumps(gen_row(5)),
    ]
    result = load_examples(write(tmp_path, "mixed.jsonl", _lines(*lines)), on_bad_rows="skip")
    assert [e.id for e in result.examples] == ["g0", "g3", "g5"]
    assert result.skipped == 3
    assert [(p.line, p.field) for p in result.problems] == [
        (2, None),
        (3, "answer"),
        (5, "question"),
        (5, "choices"),
    ]
    assert all(isinstance(p, Problem) and p.severity == "error" for p in result.problems)


def test_skip_mode_with_nothing_left_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "allbad.jsonl", _lines("{", "{"))
    with pytest.raises(DataError, match="no usable rows: all 2 rows have problems"):
        load_examples(path, "jsonl", on_bad_rows="skip")
    with pytest.raises(DataError, match="cannot detect the format: no JSON object"):
        load_examples(path, on_bad_rows="skip")


def test_duplicate_options_and_ids_are_warnings(tmp_path: Path) -> None:
    rows = [gen_row(0, choices=["Same", " same ", "other"], answer=2), gen_row(0)]
    result = load_examples(write(tmp_path, "dups.jsonl", jsonl_text(rows)))
    assert len(result.examples) == 2
    reasons = [(w.line, w.field, w.reason) for w in result.warnings]
    assert reasons[0][:2] == (1, "choices") and "duplicate options: A and B" in reasons[0][2]
    assert reasons[1][0] == 2 and "duplicate id 'g0' (first seen on line 1)" in reasons[1][2]


def test_problem_str_format() -> None:
    p = Problem("d.jsonl", 7, "cop", "answer index 5 out of range for 4 options")
    assert str(p) == "d.jsonl:7: field 'cop': answer index 5 out of range for 4 options"
    assert str(Problem("d.jsonl", None, None, "file is empty")) == "d.jsonl: file is empty"
    assert str(Problem("x.parquet", 3, None, "bad", unit="row")) == "x.parquet:row 3: bad"
    err = DataError.from_problem(p)
    assert isinstance(err, ValueError) and str(err) == str(p) and err.reason == p.reason


# ---------------------------------------------------------------------------------------- detection


def test_detect_format_table(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "a.jsonl", jsonl_text([med_row()]))) == "medmcqa"
    assert detect_format(write(tmp_path, "b.json", jsonl_text([arc_row()]))) == "arc"
    assert detect_format(write(tmp_path, "c.jsonl", _lines("{oops", GOOD_GEN))) == "jsonl"
    assert detect_format(write(tmp_path, "d.csv", "id,question,opa,opb,opc,opd,cop\n")) == "medmcqa"
    assert detect_format(FIXTURES / "anatomy_val.csv") == "mmlu-csv"
    assert set(FORMATS) == {
        "medmcqa",
        "medmcqa-raw",
        "arc",
        "openbookqa",
        "medqa",
        "lm-eval",
        "mmlu-csv",
        "jsonl",
        "csv",
        "parquet",
    }


def test_detect_ambiguous_and_unknown(tmp_path: Path) -> None:
    both = write(tmp_path, "both.jsonl", jsonl_text([dict(med_row(), answerKey="A")]))
    with pytest.raises(DataError) as info:
        detect_format(both)
    msg = str(info.value)
    assert "both.jsonl" in msg and "ambiguous" in msg and "medmcqa-raw" in msg and "mmlu-csv" in msg
    with pytest.raises(DataError, match="ambiguous"):
        load_examples(both)
    assert len(load_examples(both, "medmcqa").examples) == 1

    odd = write(tmp_path, "odd.jsonl", jsonl_text([{"prompt": "q", "options": ["a", "b"], "label": 0}]))
    with pytest.raises(DataError, match=r"cannot detect the format.*\(label, options, prompt\).*--format"):
        detect_format(odd)
    fm = FieldMap(question="prompt", choices="options", answer="label")
    assert load_examples(odd, field_map=fm).examples[0].choices == ("a", "b")

    with pytest.raises(DataError, match=r"extension '\.txt'.*--format"):
        detect_format(write(tmp_path, "notes.txt", "hello"))
    with pytest.raises(DataError, match="cannot detect the format"):
        detect_format(write(tmp_path, "weird.csv", "foo,bar\n1,2\n"))


# ------------------------------------------------------------------------------------ check_file


def test_check_file_report(tmp_path: Path) -> None:
    rows = [
        json.dumps(gen_row(0, question="aaaa", answer=0)),
        json.dumps(gen_row(1, question="bb", choices=["x", "y"], answer="B")),
        json.dumps(gen_row(2, question="cccccc", answer=0)),
        json.dumps(gen_row(3, answer=7)),
        "not json",
        json.dumps(gen_row(5, question="d" * 10, choices=["p", "q", "P"], answer=2)),
    ]
    path = write(tmp_path, "report.jsonl", _lines(*rows))
    report = check_file(path, token_length=lambda ex: len(ex.question))
    assert isinstance(report, DataReport)
    assert report.format == "jsonl" and report.rows == 4 and report.skipped == 2
    assert report.options_histogram == {2: 1, 3: 3}
    assert report.answer_distribution == {"A": 2, "B": 1, "C": 1}
    assert report.majority_letter == "A" and report.majority_share == pytest.approx(0.5)
    assert report.token_length_percentiles == {"p50": 4, "p90": 10, "p99": 10, "max": 10}
    assert [(p.line, p.field) for p in report.problems] == [(4, "answer"), (5, None)]
    assert [w.line for w in report.warnings] == [6]

    data = report.to_dict()
    json.dumps(data)  # serialisable as is
    assert (
        data["rows"] == 4
        and data["problems"][0]["line"] == 4
        and data["options_histogram"] == {"2": 1, "3": 3}
    )
    text = report.format_text()
    assert "report.jsonl" in text and "4 usable, 2 bad" in text
    assert "always 'A' = 50.0%" in text and "p90 10" in text
    assert "report.jsonl:4: field 'answer': answer index 7 out of range for 3 options" in text


def test_check_file_bundled_and_unlabelled(tmp_path: Path) -> None:
    report = check_file(bundled_path("arc_easy", "validation"))
    assert report.rows == 500 and report.problems == [] and report.token_length_percentiles is None
    assert report.options_histogram == {4: 500} and sum(report.answer_distribution.values()) == 500
    path = write(tmp_path, "nolabels.jsonl", jsonl_text([{"question": "q", "choices": ["a", "b"]}]))
    unlabelled = check_file(path, require_answer=False)
    assert unlabelled.rows == 1 and unlabelled.majority_letter is None
    assert "no problems found" in unlabelled.format_text()


def test_distribution_helpers() -> None:
    exs = [
        MCQExample("1", "q", ("a", "b"), 1),
        MCQExample("2", "q", ["a", "b", "c", "d", "e"], 1),  # lists are coerced to tuples
        MCQExample("3", "q", ("a", "b"), None),
        MCQExample("4", "q", ("a", "b", "c"), 0),
    ]
    assert exs[1].choices == ("a", "b", "c", "d", "e")
    assert answer_distribution(exs) == {"A": 1, "B": 2, "C": 0, "D": 0, "E": 0}
    assert majority_baseline(exs) == ("B", pytest.approx(2 / 3))
    assert (
        majority_baseline([MCQExample("t", "q", ("a", "b"), 1), MCQExample("u", "q", ("a", "b"), 0)])[0]
        == "A"
    )
    assert answer_distribution([]) == {}
    with pytest.raises(DataError, match="no labelled examples"):
        majority_baseline([exs[2]])
    with pytest.raises(ValueError):
        MCQExample("x", "q", ("a", "b"), 2)
    with pytest.raises(ValueError):
        MCQExample("x", "q", ("a",), 0)


def test_wrong_explicit_format_gives_one_file_level_error() -> None:
    with pytest.raises(DataError) as info:
        load_examples(bundled_path("arc_easy", "train"), "medmcqa")
    err = info.value
    assert err.line is None and err.field == "opa" and err.problems == []
    assert "format 'medmcqa' needs fields" in str(err) and "looks like 'arc'" in str(err)
    with pytest.raises(DataError, match=r"anatomy_val\.csv:1: field 'question': missing columns.*'mmlu-csv'"):
        load_examples(FIXTURES / "anatomy_val.csv", "csv")


def test_encoding_and_empty_parquet_at_detection(tmp_path: Path) -> None:
    utf16 = write(tmp_path, "excel16.csv", "question,choices,answer\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"excel16\.csv:1: not valid UTF-8 \(byte 0xff"):
        load_examples(utf16)
    latin = write(tmp_path, "latin.jsonl", '{"question": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.jsonl:1: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        load_examples(latin)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), empty)
    with pytest.raises(DataError, match=r"empty\.parquet: file is empty"):
        load_examples(empty, "parquet")
    corrupt = write(tmp_path, "corrupt.parquet", b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read as parquet"):
        load_examples(corrupt)


def test_csv_multiline_cell_reports_record_start(tmp_path: Path) -> None:
    text = 'question,choices,answer\n"two\nlines","[""a"",""b""]",0\nq2,"[""a"",""b""]",5\n'
    result = load_examples(write(tmp_path, "ml.csv", text), on_bad_rows="skip")
    assert result.examples[0].question == "two\nlines" and result.examples[0].source.endswith("ml.csv:2")
    assert [(p.line, p.field) for p in result.problems] == [(4, "answer")]
