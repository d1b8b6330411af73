"""The layouts users bring from the field's own tools, the field map, and the errors that say how to load."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcqtune.cli.data_args import add_data_args, field_config_from_args, field_map_from_args
from mcqtune.cli.main import main
from mcqtune.config import ConfigError, build_config
from mcqtune.data import (
    ANSWER_FIELDS,
    DataError,
    FieldMap,
    bundled_path,
    detect_format,
    load_examples,
)

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def printed_flags(message: str) -> list[FieldMap]:
    """Each `...` fragment of an error message, parsed by the real command-line flags into a field map."""
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    fragments = re.findall(r"`([^`]+)`", message)
    assert fragments, f"no flags printed in: {message}"
    return [field_map_from_args(parser.parse_args(shlex.split(f))) for f in fragments]


def answers(path: Path, **kwargs: Any) -> list[int | None]:
    return [e.answer for e in load_examples(path, **kwargs).examples]


# ------------------------------------------------------------------------------- the new layouts


def test_lm_eval_query_choices_gold(tmp_path: Path) -> None:
    rows = [
        {"query": "Question: What is 2+2?\nAnswer:", "choices": ["3", "4", "5"], "gold": 1},
        {"query": "Question: Sky colour?\nAnswer:", "choices": ["blue", "red"], "gold": 0},
    ]
    path = write_jsonl(tmp_path / "harness.jsonl", rows)
    assert detect_format(path) == "lm-eval"
    kept = load_examples(path)
    assert kept.format == "lm-eval" and [e.answer for e in kept.examples] == [1, 0]
    assert kept.examples[0].question == "Question: What is 2+2?\nAnswer:"  # untouched unless told
    stripped = load_examples(path, field_map=FieldMap(strip_query_prefix=True)).examples
    assert [e.question for e in stripped] == ["What is 2+2?", "Sky colour?"]
    assert stripped[0].choices == ("3", "4", "5")


def test_medqa_options_object_with_letter_or_text_answer(tmp_path: Path) -> None:
    options = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Insulin"}
    rows = [
        {
            "question": "Q1?",
            "answer": "Warfarin",
            "options": options,
            "meta_info": "step1",
            "answer_idx": "C",
        },
        {"question": "Q2?", "answer": "Aspirin", "options": options, "meta_info": "step1", "answer_idx": "A"},
    ]
    path = write_jsonl(tmp_path / "medqa.jsonl", rows)
    assert detect_format(path) == "medqa"
    result = load_examples(path)
    assert result.format == "medqa" and [e.answer for e in result.examples] == [2, 0]
    assert result.examples[0].choices == ("Aspirin", "Heparin", "Warfarin", "Insulin")

    text_only = write_jsonl(
        tmp_path / "medqa_text.jsonl", [{k: v for k, v in r.items() if k != "answer_idx"} for r in rows]
    )
    assert answers(text_only) == [2, 0]

    shuffled = {"B": "two", "A": "one"}
    bad_keys = {"A": "one", "C": "three"}
    mixed = write_jsonl(
        tmp_path / "keys.jsonl",
        [
            {"question": "Q?", "options": shuffled, "answer_idx": "B"},
            {"question": "Q?", "options": bad_keys, "answer_idx": "A"},
        ],
    )
    result = load_examples(mixed, on_bad_rows="skip")
    assert [e.choices for e in result.examples] == [("one", "two")] and result.examples[0].answer == 1
    assert [(p.line, p.field) for p in result.problems] == [(2, "options")]
    assert "option keys must be the letters A-B" in result.problems[0].reason


def test_openbookqa_question_stem_and_upstream_nesting(tmp_path: Path) -> None:
    choices = {"text": ["sun", "moon", "rock", "tree"], "label": ["A", "B", "C", "D"]}
    hf = write_jsonl(
        tmp_path / "obqa.jsonl",
        [{"id": "7-980", "question_stem": "What gives light?", "choices": choices, "answerKey": "A"}],
    )
    assert detect_format(hf) == "openbookqa"
    (example,) = load_examples(hf).examples
    assert (example.id, example.question, example.answer) == ("7-980", "What gives light?", 0)

    stem = {
        "stem": "What is hard?",
        "choices": [{"text": t, "label": lb} for t, lb in zip("wxyz", "ABCD", strict=True)],
    }
    upstream = write_jsonl(tmp_path / "obqa_up.jsonl", [{"id": "u1", "question": stem, "answerKey": "C"}])
    assert answers(upstream) == [2]

    parquet = tmp_path / "obqa.parquet"
    pq.write_table(
        pa.table({"id": ["p"], "question_stem": ["S?"], "choices": [choices], "answerKey": ["D"]}), parquet
    )
    assert detect_format(parquet) == "openbookqa" and answers(parquet) == [3]


@pytest.mark.parametrize("name", [n for n in ANSWER_FIELDS if n != "answer"])
def test_common_answer_fields_with_letters_and_told_bases(tmp_path: Path, name: str) -> None:
    def rows(values: list[Any]) -> list[dict[str, Any]]:
        return [{"question": f"Q{i}?", "choices": ["a", "b", "c"], name: v} for i, v in enumerate(values)]

    assert answers(write_jsonl(tmp_path / "letters.jsonl", rows(["B", "c"]))) == [1, 2]
    assert answers(write_jsonl(tmp_path / "zero.jsonl", rows([2, 0, 1]))) == [2, 0, 1]  # a 0: 0-based
    assert answers(write_jsonl(tmp_path / "one.jsonl", rows([3, 1, 2]))) == [2, 0, 1]  # a 3 of 3: 1-based
    assert answers(write_jsonl(tmp_path / "digits.jsonl", rows(["3", "1"]))) == [2, 0]


def test_generic_csv_with_answer_key_column(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    path.write_text(
        'question,choices,answerKey\nQ1,"[""a"",""b""]",B\nQ2,"[""a"",""b""]",A\n', encoding="utf-8"
    )
    assert detect_format(path) == "csv" and answers(path) == [1, 0]


# ------------------------------------------------------------------------- errors that say how to load


def test_issue13_label_field_names_label_and_prints_flags_that_load(tmp_path: Path) -> None:
    rows = [
        {"question": "Which is prime?", "choices": ["4", "6", "7", "9"], "label": 3},
        {"question": "Which is even?", "choices": ["3", "8", "5", "9"], "label": 2},
    ]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert "mine.jsonl" in message and "'label'" in message and info.value.field == "label"
    assert "`--field answer=label --answer-base 0`" in message
    zero_based, one_based = printed_flags(message)
    assert answers(path, field_map=zero_based) == [3, 2]
    assert answers(path, field_map=one_based) == [2, 1]

    code = main(["data", "check", str(path), "--no-tokens"])
    assert code == 2
    assert (
        main(
            ["data", "check", str(path), "--no-tokens", *shlex.split("--field answer=label --answer-base 1")]
        )
        == 0
    )


def test_two_answer_fields_is_ambiguous_and_each_printed_choice_loads(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1?", "choices": ["a", "b", "c"], "answer": "A", "label": 2},
        {"question": "Q2?", "choices": ["a", "b", "c"], "answer": "C", "label": 1},
    ]
    path = write_jsonl(tmp_path / "two.jsonl", rows)
    with pytest.raises(
        DataError, match=r"two\.jsonl: field 'answer': ambiguous answer field.*'answer' and 'label'"
    ):
        load_examples(path)
    with pytest.raises(DataError) as info:
        load_examples(path)
    maps = printed_flags(str(info.value))
    assert [m.answer for m in maps] == ["answer", "label", "label"]
    assert [answers(path, field_map=m) for m in maps] == [[0, 2], [2, 1], [1, 0]]


def test_unknown_keys_print_a_field_map_that_loads(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "q?", "options": ["a", "b"], "label": 0}])
    with pytest.raises(DataError) as info:
        load_examples(path)
    (guess,) = printed_flags(str(info.value))
    assert guess.columns() == {"question": "prompt", "choices": "options", "answer": "label"}
    assert answers(path, field_map=guess) == [0]


def test_medmcqa_with_a_second_answer_field_prints_the_format_that_loads(tmp_path: Path) -> None:
    row = {"id": "m", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "label": 1}
    path = write_jsonl(tmp_path / "med.jsonl", [row])
    with pytest.raises(
        DataError, match=r"answer in 'cop', and another answer field 'label'.*`--format medmcqa`"
    ):
        load_examples(path)
    assert answers(path, format="medmcqa") == [2]


# ------------------------------------------------------------------------------------- wrong maps


def test_map_to_a_missing_column_names_file_row_field_and_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(DataError) as info:
        load_examples(path, field_map=FieldMap(question="prompt"))
    err = info.value
    assert (err.line, err.field) == (1, "prompt")
    assert str(err) == (
        f"{path}:1: field 'prompt': --field question=prompt: the first row has no field 'prompt' "
        "(keys: question, choices, answer)"
    )
    csv = tmp_path / "q.csv"
    csv.write_text('question,options,answer\nQ,"[""a"",""b""]",0\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=r"q\.csv:1: field 'opts': .*no column 'opts' \(columns: question, options"
    ):
        load_examples(csv, field_map=FieldMap(choices="opts"))
    assert answers(csv, field_map=FieldMap(choices="options")) == [0]


def test_map_leaving_a_required_field_unmapped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "half.jsonl", [{"prompt": "Q?", "options": ["a", "b"], "label": "B"}])
    with pytest.raises(DataError) as info:
        load_examples(path, field_map=FieldMap(question="prompt"))
    err = info.value
    assert (err.line, err.field) == (1, "choices")
    assert "keys: prompt, options, label" in str(err) and "--field choices=COLUMN" in str(err)
    assert answers(path, field_map=FieldMap(question="prompt", choices="options")) == [1]  # 'label' found


def test_field_map_settings_parse_and_reject() -> None:
    fm = FieldMap.from_settings(["question=stem", "choices=o1, o2,o3", "answer=key"], 1, True)
    assert fm == FieldMap("stem", ("o1", "o2", "o3"), "key", 1, strip_query_prefix=True)
    assert (
        fm.flags()
        == "--field question=stem --field choices=o1,o2,o3 --field answer=key --answer-base 1 "
        + ("--strip-query-prefix")
    )
    assert FieldMap.from_config(fm.to_settings()) == fm
    with pytest.raises(DataError, match=r"unknown key 'qestion' \(did you mean 'question'\?\)"):
        FieldMap.from_settings(["qestion=q"])
    with pytest.raises(DataError, match="expects KEY=COLUMN"):
        FieldMap.from_settings(["question"])
    with pytest.raises(DataError, match="answer_base must be 0 or 1"):
        FieldMap.from_settings([], 2)


def test_bundled_files_keep_their_layout_under_a_user_map() -> None:
    path = bundled_path("arc_easy", "validation")
    assert len(load_examples(path, field_map=FieldMap(question="query", answer="label")).examples) == 500


# ------------------------------------------------------------------- the map reaches every reader


def test_train_config_fields_and_flags_merge(tmp_path: Path) -> None:
    from mcqtune.training.recipe import load_split

    data = write_jsonl(
        tmp_path / "h.jsonl", [{"query": "Question: Q?\nAnswer:", "choices": ["a", "b"], "gold": 1}]
    )
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("fields:\n  id: qid\nstrip_query_prefix: true\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    flags = field_config_from_args(parser.parse_args(["--field", "question=query"]))
    config = build_config({**flags, "train": str(data)}, str(yaml_file))
    assert config.fields == {"id": "qid", "question": "query"} and config.strip_query_prefix
    with pytest.raises(DataError, match=r"first row has no field 'qid'"):
        load_split(data, config, None)
    config.fields = {"question": "query"}
    examples, skipped = load_split(data, config, None)
    assert [e.question for e in examples] == ["Q?"] and skipped == 0

    yaml_file.write_text("fields:\n  qestion: query\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: fields: unknown key 'qestion'"):
        build_config({}, str(yaml_file))


def test_compare_passes_the_field_map_to_every_method(tmp_path: Path) -> None:
    from mcqtune.compare.plan import CompareSettings, plan_configs

    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "choices": ["a", "b"], "label": 2}])
    settings = CompareSettings(
        output=tmp_path / "out",
        methods=["lora", "subset"],
        overrides={
            "train": str(data),
            "validation": str(data),
            "fields": {"answer": "label"},
            "answer_base": 1,
        },
    )
    plan = plan_configs(settings)
    for config in [*plan["configs"].values(), plan["zero_shot"]]:
        assert config.field_map() == FieldMap(answer="label", answer_base=1)


def test_cli_data_check_and_eval_with_field_flags(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    rows = [{"stem": f"Q{i}?", "opts": ["yes", "no", "maybe"], "key": i % 3 + 1} for i in range(4)]
    path = write_jsonl(tmp_path / "own.jsonl", rows)
    flags = [
        "--field",
        "question=stem",
        "--field",
        "choices=opts",
        "--field",
        "answer=key",
        "--answer-base",
        "1",
    ]
    assert main(["data", "check", str(path), "--no-tokens", *flags]) == 0
    out = capsys.readouterr().out
    assert "rows: 4 usable, 0 bad" in out and "A 2 (50.0%)  B 1 (25.0%)  C 1 (25.0%)" in out

    metrics_file = tmp_path / "metrics.json"
    argv = ["eval", "--model", str(tiny_model_dir), "--data", str(path), *flags, "--limit", "2"]
    assert main([*argv, "--output", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    assert metrics["n"] == 2 and metrics["data"] == str(path)
    unmapped = ["eval", "--model", str(tiny_model_dir), "--data", str(path), "--limit", "2"]
    assert main(unmapped) == 2  # without the map the file does not load
    assert "--field question=COLUMN" in capsys.readouterr().err
