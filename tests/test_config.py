"""Config layering (defaults < method YAML < user YAML < flags) and typed errors naming file and key."""

from __future__ import annotations

import pytest

from mcqtune.config import ConfigError, build_config, resolve_objective, resolve_scoring


def test_method_defaults_then_user_yaml_then_flags(tmp_path):
    assert build_config({"method": "lora"}).lr == pytest.approx(2e-4)  # configs/methods/lora.yaml
    user = tmp_path / "run.yaml"
    user.write_text("lr: 1.0e-3\nbatch_size: 8\nmethod_options:\n  r: 4\n")
    config = build_config({"method": "lora", "batch_size": 2}, str(user))
    assert config.lr == pytest.approx(1e-3)
    assert config.batch_size == 2  # the flag wins
    assert config.method_options["r"] == 4  # merged over the method's defaults...
    assert config.method_options["alpha"] == 32  # ...not replacing them


def test_unknown_key_names_the_file_and_key(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'learning_rate'"):
        build_config({}, str(user))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("batch_size: four\n", "batch_size"),
        ("lr: [1]\n", "lr"),
        ("packing: 3\n", "packing"),
        ("max_steps: -5\n", "max_steps"),
    ],
)
def test_wrong_types_and_values_are_reported(tmp_path, text, key):
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml.*'{key}'"):
        build_config({}, str(user))


def test_flags_are_validated_too_and_named_as_typed(tmp_path):
    with pytest.raises(ConfigError, match=r"^--batch-size must be a positive integer, got 0$"):
        build_config({"batch_size": 0})
    with pytest.raises(ConfigError, match=r"^--scheduler must be one of linear, cosine, constant"):
        build_config({"scheduler": "cosin"})
    user = tmp_path / "run.yaml"
    user.write_text("max_steps: 0\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: 'max_steps' must be a positive integer"):
        build_config({"batch_size": 2}, str(user))  # a YAML value keeps the file:key form


def test_validation_follows_the_training_data(tmp_path):
    """Issue 13 item 1: a bundled name validates on its own split, a user's file on nothing unless given."""
    assert build_config({"train": "arc_easy"}).validation == "arc_easy"
    assert build_config({}).validation == "medmcqa"
    mine = tmp_path / "mine.jsonl"
    mine.write_text("{}\n")
    assert build_config({"train": str(mine)}).validation is None
    assert build_config({"train": str(mine), "validation": "arc_easy"}).validation == "arc_easy"
    user = tmp_path / "run.yaml"
    user.write_text("train: arc-easy\n")
    assert build_config({}, str(user)).validation == "arc_easy"


def test_epochs_replace_the_default_step_count():
    config = build_config({"epochs": 2.0})
    assert (config.max_steps, config.epochs) == (None, 2.0)
    assert build_config({"epochs": 2.0, "max_steps": 5}).max_steps == 5


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("adapter", {"bottleneck": "abc"}, "adapter option 'bottleneck' must be an integer, got 'abc'"),
        ("lora", {"dropout": "x"}, "lora option 'dropout' must be a number, got 'x'"),
        ("lora", {"use_dora": 1}, "lora option 'use_dora' must be true or false, got 1"),
        ("subset", {"top_k": 2.5}, "subset option 'top_k' must be an integer, got 2.5"),
    ],
)
def test_method_option_values_must_have_the_yaml_defaults_type(method, options, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"method": method, "method_options": options})


def test_method_option_values_of_the_right_type_pass():
    config = build_config(
        {"method": "lora", "method_options": {"alpha": 16, "dropout": 0, "target_modules": ["q_proj"]}}
    )
    assert config.method_options["dropout"] == 0 and config.method_options["target_modules"] == ["q_proj"]


def test_auto_objective_follows_model_size():
    assert resolve_objective("auto", 135_000_000) == "ranking"
    assert resolve_objective("auto", 1_500_000_000) == "letter"
    assert resolve_objective("letter", 135_000_000) == "letter"
    assert resolve_scoring("auto", 135_000_000) == "cloze"


def test_unknown_method_option_is_an_error_naming_it(tmp_path):
    user = tmp_path / "run.yaml"
    user.write_text("method: lora\nmethod_options:\n  rank: 8\n")  # a typo of r: must not train with r=16
    with pytest.raises(ConfigError, match=r"run.yaml: method_options: unknown option\(s\) for 'lora': rank"):
        build_config({}, str(user))
    with pytest.raises(ConfigError, match=r"command line.*'prefix': bottleneck.*num_virtual_tokens"):
        build_config({"method": "prefix", "method_options": {"bottleneck": 16}})
    # A training setting given as a method option (QLoRA had its own gradient_checkpointing): its flag.
    with pytest.raises(
        ConfigError, match=r"'gradient_checkpointing' is a training setting: --gradient-checkpointing"
    ):
        build_config({"method": "qlora", "method_options": {"gradient_checkpointing": True}})
    assert (
        build_config({"method": "adapter", "method_options": {"reduction_factor": 8}}).method_options[
            "reduction_factor"
        ]
        == 8
    )
