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
    assert line["prediction"] in "ABC"
    assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_bad_data_is_a_one_line_user_error(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 7}\n')
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "answer" in err and "Traceback" not in err


def test_data_check_reports_distribution(capsys):
    assert main(["data", "check", "medmcqa", "--no-tokens"]) in (0, 1)
    out = capsys.readouterr().out
    assert "3000" in out or "3,000" in out


def test_method_option_flags_reach_the_config_and_are_checked_against_the_method():
    from mcqtune.cli.main import method_option_flags
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
