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


def test_flags_are_validated_too():
    with pytest.raises(ConfigError, match="batch_size"):
        build_config({"batch_size": 0})


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
    assert (
        build_config({"method": "adapter", "method_options": {"reduction_factor": 8}}).method_options[
            "reduction_factor"
        ]
        == 8
    )
