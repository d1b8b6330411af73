"""The CLI contract end to end on a tiny model: train -> eval/predict from the run dir alone."""

from __future__ import annotations

import json

import pytest

from mcqtune.cli.main import build_parser, main

SUBCOMMANDS = [[], ["data", "check"], ["train"], ["eval"], ["predict"], ["demo"]]


@pytest.mark.parametrize("words", SUBCOMMANDS)
def test_every_help_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mcqtune" in out and len(out.splitlines()) > 3


def test_cli_contract_names_exist():
    parser = build_parser()
    train_flags = {
        a
        for action in parser._subparsers._group_actions[0].choices["train"]._actions
        for a in action.option_strings
    }
    for flag in [
        "--method",
        "--objective",
        "--model",
        "--train",
        "--validation",
        "--output",
        "--max-steps",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--config",
    ]:
        assert flag in train_flags


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("runs") / "lora"
    code = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--train",
            "arc_easy",
            "--validation",
            "arc_easy",
            "--objective",
            "letter",
            "--output",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--train-limit",
            "8",
            "--eval-limit",
            "8",
            "--final-eval-limit",
            "8",
            "--eval-steps",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_train_writes_peft_adapter_config_and_metrics(trained_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (trained_run / "adapter" / "adapter_model.safetensors").is_file()
    assert (trained_run / "config.yaml").is_file()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 8
    assert {"accuracy", "ci95", "majority_baseline", "predicted_letter_distribution"} <= set(
        metrics["validation"]
    )
    manifest = json.loads((trained_run / "mcqtune.json").read_text())
    assert manifest["method"] == "lora" and manifest["scoring"] == "letter"
    base = AutoModelForCausalLM.from_pretrained(manifest["base_model"])
    assert isinstance(PeftModel.from_pretrained(base, trained_run / "adapter"), PeftModel)


def test_eval_uses_the_adapters_formulation_and_writes_metrics(trained_run, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(trained_run),
                "--data",
                "arc_easy",
                "--limit",
                "8",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["scoring"] == "letter" and metrics["n"] == 8
    train_metrics = json.loads((trained_run / "metrics.json").read_text())["validation"]
    assert metrics["accuracy"] == train_metrics["accuracy"]
    assert "majority-letter baseline" in capsys.readouterr().out


def test_predict_prints_every_option_probability(trained_run, capsys):
    code = main(
        [
            "predict",
            "--adapter",
            str(trained_run),
            "--question",
            "Which is a planet?",
            "--choice",
            "Mars",
            "--choice",
            "the Sun",
            "--choice",
            "the Moon",
            "--json",
        ]
    )
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    probabilities = line["probabilities"]
    assert set(probabilities) == {"A", "B", "C"}
    assert line["prediction"] == max(probabilities, key=probabilities.get)  # the most probable letter
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)


def test_bad_data_is_a_one_line_user_error(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 7}\n')
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "answer" in err and "Traceback" not in err


def test_data_check_reports_distribution(capsys):
    assert main(["data", "check", "medmcqa", "--no-tokens"]) == 0  # warnings (duplicate options) only
    out = capsys.readouterr().out
    assert "3000" in out or "3,000" in out


def test_method_option_flags_reach_the_config_and_are_checked_against_the_method():
    from mcqtune.cli.train import method_option_flags
    from mcqtune.config import ConfigError, build_config

    parser = build_parser()
    args = parser.parse_args(["train", "--method", "subset", "--top-k", "2", "--no-train-head"])
    assert method_option_flags(args) == {"top_k": 2, "train_head": False}
    config = build_config({"method": "subset", "method_options": method_option_flags(args)})
    assert config.method_options["top_k"] == 2 and config.method_options["train_head"] is False
    args = parser.parse_args(
        ["train", "--method", "qlora", "--lora-r", "8", "--quant-type", "fp4", "--no-double-quant"]
    )
    assert method_option_flags(args) == {"r": 8, "quant_type": "fp4", "double_quant": False}
    args = parser.parse_args(["train", "--method", "lora", "--bottleneck", "32"])
    with pytest.raises(ConfigError, match=r"unknown option.*'lora': bottleneck"):
        build_config({"method": "lora", "method_options": method_option_flags(args)})


# ------------------------------------------------------------------ eval / predict: the newcomer's defects
@pytest.fixture()
def no_model_loads(monkeypatch):
    """Fail the test if any model weights are read: the command must stop before that."""
    from mcqtune import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", refuse)


def _question(*choices: str, question: str = "Which is a planet?") -> list[str]:
    return ["--question", question, *[a for c in choices for a in ("--choice", c)]]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (_question(*"abcdefghijk"), "11 options given; a question needs 2 to 10 (A-J)"),
        (_question("Mars", "Venus", question="   "), "the question is empty"),
        (_question("Mars", " ", "Venus"), "option B is empty"),
    ],
    ids=["11 choices", "blank question", "blank choice"],
)
def test_predict_refuses_a_bad_typed_question_in_one_line(
    argv, expected, tiny_model_dir, capsys, no_model_loads
):
    assert main(["predict", "--model", str(tiny_model_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {expected}"
    assert "Traceback" not in err


def test_save_prior_into_an_unwritable_place_fails_before_any_work(
    tmp_path, capsys, monkeypatch, no_model_loads
):
    import mcqtune.preflight as preflight

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", read_only)
    argv = ["eval", "--data", "arc_easy", "--debias", "--save-prior", str(tmp_path / "ro" / "prior.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--save-prior" in err and "cannot write" in err and "Read-only file system" in err


def test_eval_output_does_not_overwrite_an_existing_file(trained_run, tmp_path, capsys):
    existing = tmp_path / "notes.json"
    existing.write_text("my notes")
    argv = ["eval", "--adapter", str(trained_run), "--data", "arc_easy"]
    argv += ["--limit", "4", "--output", str(existing)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_text() == "my notes"
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(existing.read_text())["n"] == 4


@pytest.mark.parametrize("leftover", [".mcqtune.lock", "checkpoints"])
def test_eval_of_an_unfinished_run_says_how_to_resume(leftover, tmp_path, capsys, no_model_loads):
    run = tmp_path / "run"
    run.mkdir()
    if leftover == "checkpoints":
        (run / leftover / "step-2").mkdir(parents=True)
    else:
        (run / leftover).touch()
    assert main(["eval", "--adapter", str(run), "--data", "arc_easy"]) == 2
    err = capsys.readouterr().err
    assert "this run did not finish" in err and "re-run the same train command" in err
    assert "is this a mcqtune run directory" not in err


def test_predict_shows_the_question_the_answer_and_every_option(trained_run, capsys):
    assert main(["predict", "--adapter", str(trained_run), *_question("Mars", "the Sun", "the Moon")]) == 0
    out = capsys.readouterr().out
    assert "cli:" not in out
    lines = out.splitlines()
    assert "Which is a planet?" in lines
    answer = next(line for line in lines if line.startswith("answer: "))
    letter, text = answer.removeprefix("answer: ").split(". ", 1)
    assert text == {"A": "Mars", "B": "the Sun", "C": "the Moon"}[letter]
    options = [line for line in lines if line.strip()[:1] in ("*", "A", "B", "C") and "%" in line]
    assert len(options) == 3 and sum(
        float(line.split("%")[0].split()[-1]) for line in options
    ) == pytest.approx(100, abs=0.2)


def test_predict_data_shows_each_question_its_chosen_option_and_whether_it_was_right(trained_run, capsys):
    from mcqtune.data import bundled_path, load_examples

    rows = load_examples(bundled_path("arc_easy", "validation"), limit=3).examples
    data = bundled_path("arc_easy", "validation")
    assert main(["predict", "--adapter", str(trained_run), "--data", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for row in rows:
        line = next(line for line in lines if line.startswith(f"{row.id}: "))
        assert row.question[:20] in line
        chosen = line.split(" -> ", 1)[1]
        letter, rest = chosen.split(". ", 1)
        assert rest.startswith(row.choices["ABCDE".index(letter)])
        assert rest.endswith(("  right", f"(answer {row.answer_letter})"))
    assert any(line.endswith("questions with a known answer right") for line in lines)


@pytest.mark.parametrize("data", ["arc_easy", "medmcqa"])
def test_eval_header_names_the_dataset(data, tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--data", data, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{data} (validation): zero-shot ")
    assert "validation.jsonl" not in out
