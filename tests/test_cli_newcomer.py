"""Issue 13, the CLI as a newcomer meets it: validation follows the training data, progress in logs,
one-line usage errors, honest loss names, ``--version``. Tiny model; each test fails on the old CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from mcqtune import __version__, progress
from mcqtune.cli.main import main
from mcqtune.data import bundled_path

TINY_RUN = ["--objective", "ranking", "--max-steps", "3", "--batch-size", "2", "--train-limit", "6"]
TINY_EVAL = ["--eval-steps", "2", "--eval-limit", "4", "--final-eval-limit", "4"]


@pytest.fixture
def log_progress(monkeypatch):
    """stderr is captured (not a terminal): progress must come as whole lines; print each update."""
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.0)


def _train(tiny_model_dir, output, *extra: str) -> int:
    return main(["train", "--model", str(tiny_model_dir), "--output", str(output), *TINY_RUN, *extra])


def test_a_bundled_training_set_validates_on_its_own_split(tmp_path, tiny_model_dir, capsys, log_progress):
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out, "--train", "arc_easy", *TINY_EVAL) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load((out / "config.yaml").read_text())["validation"] == "arc_easy"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == {"train": "arc_easy", "validation": "arc_easy"}
    # Every printout of a validation pass names the data it scored.
    assert "step 0: validation (arc_easy): " in captured.out
    assert "validation (arc_easy, lora, cloze scoring)" in captured.out
    assert "medmcqa" not in captured.out
    # Progress in a log: whole lines, never carriage-return redraws.
    assert "\r" not in captured.err
    assert "train lora: 3/3 step" in captured.err
    assert "validation (arc_easy): " in captured.err and " batch" in captured.err
    # final_loss is the last step's loss; the mean keeps its own name.
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    assert metrics["train"]["final_loss"] == pytest.approx(losses[-1], abs=1e-5)
    assert metrics["train"]["mean_loss_last_10"] == pytest.approx(sum(losses) / len(losses), abs=1e-4)


def test_a_users_file_has_no_implicit_validation(tmp_path, tiny_model_dir, capsys):
    mine = tmp_path / "mine.jsonl"
    shutil.copy(bundled_path("arc_easy", "train"), mine)
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out, "--train", str(mine), "--quiet") == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["validation"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["validation"] is None and "validation" not in metrics
    assert "validation" not in capsys.readouterr().out


def test_eval_and_debias_calibration_show_progress(tiny_model_dir, capsys, log_progress):
    args = ["eval", "--model", str(tiny_model_dir), "--data", "arc_easy", "--limit", "8", "--debias"]
    assert main([*args, "--calibration-size", "4", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "eval (arc_easy): 2/2 batch" in err
    assert "debias calibration: " in err
    assert "\r" not in err


def test_a_usage_mistake_is_one_line_and_a_pointer_to_help(capsys):
    assert main(["train", "--lr", "abc"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "mcqtune train: error: argument --lr: invalid float value: 'abc'",
        "see: mcqtune train --help",
    ]


def test_a_bad_method_option_value_names_the_option_and_its_type(tmp_path, capsys):
    args = ["train", "--method", "adapter", "--option", "bottleneck=abc", "--output", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: command line: adapter option 'bottleneck' must be an integer, got 'abc'"]
    assert not (tmp_path / "r").exists()


def test_a_bad_flag_value_is_named_as_the_flag(tmp_path, capsys):
    assert main(["train", "--max-steps", "0", "--output", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-steps must be a positive integer, got 0"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mcqtune {__version__}"
