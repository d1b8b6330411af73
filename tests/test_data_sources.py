"""Data sources (docs/DATA.md "Data sources"): one reference decides what a data flag names (a bundled
set, a file, a ``save_to_disk`` directory, a hub-layout directory, a hub id) and each loads through the
same layout detection, field map and row checks as a file. Every data set here is built with
``datasets`` itself in a temporary directory; the hub id test runs offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from mcqtune.data import (
    DataError,
    DataRef,
    bundled_path,
    check_file,
    load_examples,
    load_split,
    resolve_data,
)
from mcqtune.data.reference import BUNDLED, FILE, HUB, HUB_DIR, SAVED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_bars():
    datasets.disable_progress_bars()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def bundled_rows(name: str, split: str) -> list[dict]:
    lines = bundled_path(name, split).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def saved_arc(tmp_path: Path, validation_rows: int | None = None) -> Path:
    """bundled ARC-Easy saved as a DatasetDict with train and validation splits."""
    val = bundled_rows("arc_easy", "validation")[:validation_rows]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(bundled_rows("arc_easy", "train")),
            "validation": datasets.Dataset.from_list(val),
        }
    )
    target = tmp_path / "saved"
    dd.save_to_disk(str(target))
    return target


# ------------------------------------------------------------------------- what a reference names


def test_bundled_names_and_splits():
    ref = DataRef.parse("arc_easy", "validation")
    assert (ref.kind, ref.location, ref.split) == (BUNDLED, "arc_easy", "validation")
    assert ref.label == "arc_easy (validation)" and ref.name == "arc_easy"
    assert ref.path == bundled_path("arc_easy", "validation")
    assert ref.record() == {"kind": "bundled", "source": "arc_easy", "split": "validation"}
    assert ref.own_validation() == "arc_easy"
    named = DataRef.parse("ARC-Easy:train", "validation")
    assert (named.location, named.split, named.name) == ("arc_easy", "train", "arc_easy:train")
    assert DataRef.parse("medmcqa:dev").split == "validation"
    with pytest.raises(DataError, match="unknown split 'test'"):
        DataRef.parse("medmcqa:test")


def test_files_and_unknown_names(tmp_path: Path):
    f = write_jsonl(tmp_path / "mine.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
    ref = DataRef.parse(str(f), "train")
    assert (ref.kind, ref.split, ref.name, ref.label) == (FILE, None, "mine", str(f))
    assert ref.own_validation() is None and ref.is_file
    assert resolve_data(str(f), "train") == f
    # the same file through the reference, load_examples and load_split
    assert ref.load().examples == load_examples(f).examples
    with pytest.raises(DataError, match="a data file has no splits"):
        DataRef.parse(f"{f}:train")
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        DataRef.parse(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"neither an existing file nor a bundled dataset.*'medmcqa'"):
        DataRef.parse("medmcq")
    assert DataRef.parse("openlifescienceai/medmcqa:validation").kind == HUB


def test_the_callers_ask_the_reference(tmp_path: Path):
    from mcqtune.compare.plan import eval_set_name
    from mcqtune.config import build_config
    from mcqtune.training.recipe import validation_name

    f = write_jsonl(tmp_path / "val.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
    assert eval_set_name("arc_easy") == "arc_easy" and eval_set_name(str(f)) == "val"
    config = build_config({"train": "arc_easy", "validation": str(f)})
    assert validation_name(config) == "val"
    assert validation_name(build_config({"train": "arc_easy"})) == "arc_easy"
    assert load_split(str(f), config, None)[0][0].question == "q"


# ----------------------------------------------------------------------------- save_to_disk data sets


def test_saved_datasetdict_loads_like_the_file_it_came_from(tmp_path: Path):
    saved = saved_arc(tmp_path)
    ref = DataRef.parse(f"{saved}:validation", "train")
    assert (ref.kind, ref.split) == (SAVED, "validation")
    result = ref.load()
    file_result = load_examples(bundled_path("arc_easy", "validation"))
    assert result.format == file_result.format == "arc"
    assert [(e.question, e.choices, e.answer, e.id) for e in result.examples] == [
        (e.question, e.choices, e.answer, e.id) for e in file_result.examples
    ]
    assert result.source["kind"] == "saved" and result.source["split"] == "validation"
    assert result.source["fingerprint"]
    # data check: the same row counts as the file
    report, file_report = check_file(ref), check_file(bundled_path("arc_easy", "validation"))
    assert (report.rows, report.skipped, report.answer_distribution) == (
        file_report.rows,
        file_report.skipped,
        file_report.answer_distribution,
    )
    assert report.path == f"{saved} (validation)"


def test_saved_datasetdict_split_errors(tmp_path: Path):
    saved = saved_arc(tmp_path, validation_rows=5)
    with pytest.raises(
        DataError, match=r"has several splits \(train, validation\); name one as .*saved:SPLIT"
    ):
        DataRef.parse(str(saved)).load()
    with pytest.raises(DataError, match=r"no split 'test'; its splits: train, validation"):
        DataRef.parse(f"{saved}:test").load()
    with pytest.raises(DataError, match=r"no split 'valid' \(did you mean 'validation'\?\)"):
        DataRef.parse(f"{saved}:valid").load()


def test_single_saved_dataset_needs_no_split(tmp_path: Path):
    target = tmp_path / "one"
    datasets.Dataset.from_list(bundled_rows("medmcqa", "validation")[:40]).save_to_disk(str(target))
    result = DataRef.parse(str(target)).load()
    assert len(result.examples) == 40 and result.format == "medmcqa"
    with pytest.raises(DataError, match="holds one saved Dataset, not a DatasetDict; drop ':train'"):
        DataRef.parse(f"{target}:train").load()


def test_a_bad_row_names_source_split_row_and_field(tmp_path: Path):
    rows = bundled_rows("medmcqa", "validation")[:6]
    rows[3] = {**rows[3], "cop": 7}
    target = tmp_path / "bad"
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows)}).save_to_disk(str(target))
    with pytest.raises(DataError) as caught:
        DataRef.parse(str(target)).load()  # one split: none needs naming
    message = str(caught.value)
    assert f"{target} (dev):row 3: field 'cop': answer index 7 out of range for 4 options" in message
    kept = DataRef.parse(str(target)).load(on_bad_rows="skip")
    assert len(kept.examples) == 5 and kept.skipped == 1


def test_a_field_map_applies_to_a_data_set(tmp_path: Path):
    rows = [{"stem": f"Q{i}?", "opts": ["yes", "no", "maybe"], "key": i % 3} for i in range(4)]
    target = tmp_path / "mine"
    datasets.Dataset.from_list(rows).save_to_disk(str(target))
    with pytest.raises(DataError, match="match no known layout"):
        DataRef.parse(str(target)).load()
    from mcqtune.data import FieldMap

    fm = FieldMap(question="stem", choices="opts", answer="key", answer_base=0)
    assert [e.answer for e in DataRef.parse(str(target)).load(field_map=fm).examples] == [0, 1, 2, 0]
    with pytest.raises(DataError, match="--field question=prompt: the data set has no column 'prompt'"):
        DataRef.parse(str(target)).load(field_map=FieldMap(question="prompt"))


# --------------------------------------------------------------------- hub-layout directories


def hub_layout(tmp_path: Path) -> Path:
    """A directory like a hub repository: two subsets (configs) declared in the README."""
    repo = tmp_path / "repo"
    arc = bundled_rows("arc_easy", "validation")
    med = bundled_rows("medmcqa", "validation")
    write_jsonl(repo / "easy" / "train.jsonl", arc[:30])
    write_jsonl(repo / "easy" / "validation.jsonl", arc[30:42])
    write_jsonl(repo / "med" / "test.jsonl", med[:9])
    configs = [
        {
            "config_name": "easy",
            "data_files": [
                {"split": "train", "path": "easy/train.jsonl"},
                {"split": "validation", "path": "easy/validation.jsonl"},
            ],
        },
        {"config_name": "med", "data_files": [{"split": "test", "path": "med/test.jsonl"}]},
    ]
    (repo / "README.md").write_text(f"---\n{yaml.safe_dump({'configs': configs})}---\n# a data set\n")
    return repo


def test_hub_layout_directory_with_configs(tmp_path: Path):
    repo = hub_layout(tmp_path)
    ref = DataRef.parse(f"{repo}:validation", "train", subset="easy")
    assert ref.kind == HUB_DIR
    result = ref.load()
    assert len(result.examples) == 12 and result.format == "arc"
    assert result.source == {
        "kind": "hub_dir",
        "source": str(repo),
        "split": "validation",
        "subset": "easy",
        "fingerprint": result.source["fingerprint"],
    }
    # one split in the subset: none needs naming
    assert len(DataRef.parse(str(repo), subset="med").load().examples) == 9
    with pytest.raises(DataError, match=r"easy, med \(pass --subset NAME\)"):
        DataRef.parse(f"{repo}:validation").load()
    with pytest.raises(DataError, match=r"no subset 'hard'; its subsets: easy, med"):
        DataRef.parse(str(repo), subset="hard").load()
    with pytest.raises(DataError, match=r"has several splits \(train, validation\)"):
        DataRef.parse(str(repo), subset="easy").load()


def test_plain_directory_of_files_and_an_empty_one(tmp_path: Path):
    folder = tmp_path / "plain"
    write_jsonl(folder / "train.jsonl", bundled_rows("arc_easy", "validation")[:7])
    write_jsonl(folder / "test.jsonl", bundled_rows("arc_easy", "validation")[7:10])
    assert len(DataRef.parse(f"{folder}:test").load().examples) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is a directory with neither a saved data set"):
        DataRef.parse(str(empty))


# ------------------------------------------------------------------------------ the hub's schemas


HUB_SCHEMAS = {
    # openlifescienceai/medmcqa
    "medmcqa": (
        {
            "id": "x",
            "question": "Q?",
            "opa": "a",
            "opb": "b",
            "opc": "c",
            "opd": "d",
            "cop": 2,
            "choice_type": "single",
            "exp": None,
            "subject_name": "Anatomy",
            "topic_name": None,
        },
        2,
    ),
    # allenai/ai2_arc
    "arc": (
        {
            "id": "x",
            "question": "Q?",
            "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
            "answerKey": "C",
        },
        2,
    ),
    # cais/mmlu (answer: a ClassLabel, an integer)
    "parquet": ({"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 1}, 1),
    # allenai/openbookqa
    "openbookqa": (
        {
            "id": "x",
            "question_stem": "Q?",
            "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]},
            "answerKey": "D",
        },
        3,
    ),
    # GBaker/MedQA-USMLE-4-options
    "medqa": (
        {
            "question": "Q?",
            "answer": "c",
            "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
            "meta_info": "step1",
            "answer_idx": "C",
            "metamap_phrases": ["q"],
        },
        2,
    ),
}


@pytest.mark.parametrize("layout", list(HUB_SCHEMAS))
def test_hub_schemas_detect(tmp_path: Path, layout: str):
    row, answer = HUB_SCHEMAS[layout]
    target = tmp_path / layout
    datasets.Dataset.from_list([row, row]).save_to_disk(str(target))
    result = DataRef.parse(str(target)).load()
    assert result.format == layout
    assert [e.answer for e in result.examples] == [answer, answer]


def test_commonsense_qa_schema_detects(tmp_path: Path):
    """tau/commonsense_qa: ARC's choices and answerKey, plus question_concept; the test split has no key."""
    choices = {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b", "c", "d", "e"]}
    row = {"id": "x", "question": "Q?", "question_concept": "c", "choices": choices, "answerKey": "E"}
    unlabelled = {**row, "answerKey": ""}
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([row]), "test": datasets.Dataset.from_list([unlabelled])}
    )
    dd.save_to_disk(str(tmp_path / "csqa"))
    result = DataRef.parse(f"{tmp_path / 'csqa'}:train").load()
    assert result.format == "arc" and result.examples[0].answer == 4
    test = DataRef.parse(f"{tmp_path / 'csqa'}:test").load(require_answer=False)
    assert test.examples[0].answer is None


# ---------------------------------------------------------------------------------- hub ids offline


def test_an_uncached_hub_id_offline_is_one_clear_line(tmp_path: Path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    argv = [
        sys.executable,
        "-m",
        "mcqtune.cli.main",
        "data",
        "check",
        "someone/absent-set:train",
        "--no-tokens",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "someone/absent-set" in lines[0] and "offline mode is on" in lines[0]


def _gated() -> Exception:
    from huggingface_hub.errors import GatedRepoError

    try:  # datasets wraps the hub's error: the cause chain carries it
        raise GatedRepoError("Access to dataset owner/gated is restricted")
    except GatedRepoError as inner:
        try:
            raise FileNotFoundError("owner/gated: cannot read README.md") from inner
        except FileNotFoundError as outer:
            return outer


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (lambda: _gated(), "is a gated data set on the Hugging Face hub: accept its terms"),
        (
            lambda: datasets.exceptions.DatasetNotFoundError(
                "Dataset 'owner/private' doesn't exist on the Hub or cannot be accessed."
            ),
            "not found on the Hugging Face hub, nor a local path: check the id, or, for a private data set, "
            "set HF_TOKEN",
        ),
        (lambda: ConnectionError("Couldn't reach 'owner/x' on the Hub"), "cannot reach the Hugging Face hub"),
    ],
)
def test_hub_access_failures_are_one_line(monkeypatch, failure, expected):
    """A gated set, a private (or misspelt) one without a token, no network: one line naming the source."""

    def refuse(*args, **kwargs):
        raise failure()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "get_dataset_split_names", refuse)
    monkeypatch.setattr(datasets, "get_dataset_config_names", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    for text in ("owner/set", "owner/set:train"):
        with pytest.raises(DataError) as caught:
            DataRef.parse(text).load()
        message = str(caught.value)
        assert message.startswith("owner/set: ") and expected in message and "\n" not in message


# ------------------------------------------------------------------------------------ training on them

TINY_RUN = ["--objective", "ranking", "--max-steps", "3", "--batch-size", "2", "--train-limit", "6"]
TINY_EVAL = ["--eval-steps", "2", "--eval-limit", "4", "--final-eval-limit", "4", "--quiet"]


def test_train_and_eval_from_a_saved_data_set_record_their_source(tmp_path: Path, tiny_model_dir: Path):
    from mcqtune.cli.main import main

    saved = saved_arc(tmp_path, validation_rows=8)
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--output", str(out), *TINY_RUN, *TINY_EVAL]
    assert main([*argv, "--train", f"{saved}:train", "--validation", f"{saved}:validation"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == {"train": f"{saved}:train", "validation": f"{saved}:validation"}
    sources = metrics["sources"]
    assert sources["train"]["kind"] == "saved" and sources["train"]["split"] == "train"
    assert sources["validation"]["split"] == "validation" and sources["validation"]["fingerprint"]
    assert metrics["validation"]["n"] == 4
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"] == f"{saved}:train" and config["validation"] == f"{saved}:validation"
    # the same data through eval (a reference passed where a file path was)
    scores = tmp_path / "eval.json"
    argv = ["eval", "--model", str(tiny_model_dir), "--adapter", str(out), "--data", f"{saved}:validation"]
    assert main([*argv, "--output", str(scores)]) == 0
    assert json.loads(scores.read_text())["n"] == 8


@pytest.mark.slow
def test_the_bundled_model_trains_from_a_saved_copy_of_arc_easy(tmp_path: Path):
    """The real model: a few LoRA steps from a save_to_disk copy of bundled ARC-Easy rows; the training
    rows are exactly the file's, so the run equals the same run on the bundled file."""
    from mcqtune.config import TrainConfig, build_config
    from mcqtune.training.recipe import train

    saved = saved_arc(tmp_path, validation_rows=8)
    common = {"max_steps": 4, "batch_size": 2, "train_limit": 8, "eval_steps": 4, "eval_limit": 2}
    common |= {"final_eval_limit": 8, "precision": "fp32"}
    no_checkpoints = TrainConfig(save_steps=None)  # (a flag of None reads as not given)
    from_saved = build_config(
        {
            **common,
            "train": f"{saved}:train",
            "validation": f"{saved}:validation",
            "output": str(tmp_path / "a"),
        },
        base=no_checkpoints,
    )
    result = train(from_saved, show_progress=False)
    assert result.metrics["train"]["steps"] == 4 and result.metrics["validation"]["n"] == 8
    assert result.metrics["sources"]["train"]["kind"] == "saved"
    val_file = write_jsonl(tmp_path / "val.jsonl", bundled_rows("arc_easy", "validation")[:8])
    from_file = build_config(
        {**common, "train": "arc_easy", "validation": str(val_file), "output": str(tmp_path / "b")},
        base=no_checkpoints,
    )
    same = train(from_file, show_progress=False)
    assert result.metrics["train"]["final_loss"] == pytest.approx(
        same.metrics["train"]["final_loss"], abs=1e-6
    )
    assert result.metrics["validation"]["accuracy"] == same.metrics["validation"]["accuracy"]
