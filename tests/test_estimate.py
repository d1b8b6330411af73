"""`mcqtune estimate`: counts from a config.json alone agree with the real methods applied to real weights;
the memory arithmetic (quantization, sharding, checkpointing) and bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mcqtune.cli.main import main
from mcqtune.config import method_defaults
from mcqtune.errors import ConfigError, ModelError
from mcqtune.estimate import estimate_memory, load_model_config, shipped_model_names
from mcqtune.methods import get_method, parameter_report
from mcqtune.models import resolve_model

JSON_FIELDS = (
    "weights_bytes",
    "trainable_bytes",
    "gradients_bytes",
    "optimizer_bytes",
    "activations_bytes",
    "total_bytes",
)


@pytest.fixture(scope="module")
def config_only_dir(tmp_path_factory, tiny_model_dir):
    """A directory holding nothing but the tiny model's config.json: a valid --model for estimate."""
    path = tmp_path_factory.mktemp("config-only")
    shutil.copy(tiny_model_dir / "config.json", path / "config.json")
    return path


# The tiny model has 4 layers: the subset default (top 10) does not fit.
OPTIONS = {"subset": {"top_k": 2}}


def _applied(method_name: str, model_dir, precision: str):
    """The method as training applies it (its defaults file's options), on the real (tiny) weights."""
    method = get_method(method_name)
    options = {**method_defaults(method_name)["method_options"], **OPTIONS.get(method_name, {})}
    base = method.load_base(resolve_model(str(model_dir)), options, torch.device("cpu"))
    method.prepare_base(base, precision)
    return method.apply(base, options)


@pytest.mark.parametrize("method_name", ["lora", "full", "subset", "adapter", "qlora"])
def test_trainable_count_equals_the_applied_methods_report(method_name, tiny_model_dir, config_only_dir):
    real = parameter_report(_applied(method_name, tiny_model_dir, "bf16"))
    estimate = estimate_memory(
        str(config_only_dir), method_name, precision="bf16", options=OPTIONS.get(method_name)
    )
    assert estimate.trainable_params == real.trainable
    assert estimate.total_params == real.total
    assert estimate.trainable_bytes == 4 * real.trainable  # fp32 master weights
    assert estimate.gradients_bytes == estimate.trainable_bytes
    assert estimate.optimizer_bytes == 8 * real.trainable  # AdamW: two fp32 moments


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_frozen_weight_bytes_equal_the_real_frozen_base(precision, tiny_model_dir, config_only_dir):
    real = parameter_report(_applied("lora", tiny_model_dir, precision))
    estimate = estimate_memory(str(config_only_dir), "lora", precision=precision)
    assert estimate.weights_bytes == real.frozen_base_bytes


def test_four_bit_weights_count_packed_bytes_plus_their_scales(tiny_model_dir, config_only_dir):
    real = parameter_report(_applied("qlora", tiny_model_dir, "bf16"))  # packed 4-bit bytes, no scales
    qlora = estimate_memory(str(config_only_dir), "qlora")
    single = estimate_memory(str(config_only_dir), "qlora", options={"double_quant": False})
    bf16 = estimate_memory(str(config_only_dir), "lora")
    assert real.frozen_base_bytes < qlora.weights_bytes < single.weights_bytes < bf16.weights_bytes
    # The scales add 1/64 byte per weight with double quantization (4/64 without): a few percent.
    assert qlora.weights_bytes < 1.05 * real.frozen_base_bytes


def test_paged_8bit_adam_keeps_about_a_quarter_of_adamws_state(config_only_dir):
    adamw = estimate_memory(str(config_only_dir), "qlora", options={"optimizer": "adamw"})
    paged = estimate_memory(str(config_only_dir), "qlora", options={"optimizer": "paged_adamw_8bit"})
    assert paged.optimizer_bytes == pytest.approx(adamw.optimizer_bytes / 4, rel=0.02)


def test_sharding_divides_what_it_shards(config_only_dir):
    def estimate(**kwargs):
        return estimate_memory(str(config_only_dir), "full", **kwargs)

    single = estimate()
    ddp = estimate(num_processes=4)
    zero2 = estimate(num_processes=4, sharding="zero2")
    zero3 = estimate(num_processes=4, sharding="zero3")
    fsdp = estimate(num_processes=4, sharding="fsdp")
    assert ddp.trainable_bytes == single.trainable_bytes
    assert ddp.gradients_bytes == 2 * single.gradients_bytes  # DDP's all-reduce buckets: a second copy
    assert zero2.optimizer_bytes == single.optimizer_bytes // 4
    assert zero2.gradients_bytes == single.gradients_bytes // 4
    assert zero2.trainable_bytes == single.trainable_bytes
    assert zero3.trainable_bytes == single.trainable_bytes // 4
    assert zero3.to_dict() | {"sharding": "fsdp"} == fsdp.to_dict()
    assert ddp.activations_bytes == zero2.activations_bytes == single.activations_bytes
    # ZeRO-3 gathers one layer's weights at a time: autocast's bf16 weight copies are sharded with them.
    assert 0 < zero3.activations_bytes < single.activations_bytes
    assert single.total_bytes > zero2.total_bytes > zero3.total_bytes


def test_activations_scale_with_tokens_and_checkpointing_keeps_less(config_only_dir):
    def activations(**kwargs):
        return estimate_memory(str(config_only_dir), "lora", objective="letter", **kwargs).activations_bytes

    assert activations(batch_size=8, precision="fp32") == pytest.approx(
        2 * activations(batch_size=4, precision="fp32"), rel=0.01
    )
    # Under bf16 autocast's bf16 copy of the fp32 (tied) LM head is there at any batch size.
    step = activations(batch_size=8) - activations(batch_size=4)
    assert activations(batch_size=12) - activations(batch_size=8) == pytest.approx(step, rel=0.01)
    assert activations(batch_size=4) - step > 0
    dropout = {"options": {"dropout": 0.05}}  # its fp32 outputs make checkpointing's saving clearest
    assert activations(max_length=256, gradient_checkpointing=True, **dropout) < (
        activations(max_length=256, **dropout) / 2
    )
    assert activations(max_length=256, gradient_checkpointing=True) < activations(max_length=256)
    assert activations(precision="fp32", **dropout) > activations(precision="bf16", **dropout)
    # LoRA's default (no dropout) keeps only autocast's bf16 copy of each added layer's input, and in
    # fp32 (no autocast) not even that: its input is a tensor the layer keeps anyway
    assert activations() < activations(**dropout)
    assert activations(precision="fp32") < activations(precision="fp32", **dropout)


def test_shipped_configs_match_the_published_parameter_counts():
    published = {
        "llama-3.2-1b": 1_235_814_400,
        "llama-3.1-8b": 8_030_261_248,
        "llama-3.1-70b": 70_553_706_496,
        "qwen2.5-1.5b": 1_543_714_304,
        "qwen2.5-7b": 7_615_616_512,
    }
    assert shipped_model_names() == sorted(published)
    for name, count in published.items():
        assert estimate_memory(name, "full").total_params == count, name


def test_cli_json_prints_the_figures_in_bytes(config_only_dir, capsys):
    assert main(["estimate", "--model", str(config_only_dir), "--method", "lora", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert all(isinstance(figures[key], int) and figures[key] > 0 for key in JSON_FIELDS)
    parts = sum(figures[key] for key in JSON_FIELDS[:-1]) + figures["overhead_bytes"]
    assert figures["total_bytes"] == parts


def test_cli_text_names_every_part(capsys):
    assert main(["estimate", "--model", "llama-3.2-1b", "--method", "qlora", "--num-processes", "2"]) == 0
    out = capsys.readouterr().out
    for label in ("weights", "trainable", "gradients", "optimizer", "activations", "total per device"):
        assert label in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--option", "optimizer=sgd"], "optimizer must be one of"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--num-processes", "-2"], "--num-processes must be a positive integer"),
    ],
)
def test_bad_arguments_are_user_errors(argv, message, config_only_dir, capsys):
    method = [] if "--method" in argv else ["--method", "qlora"]
    assert main(["estimate", "--model", str(config_only_dir), *method, *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_model_configs_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"holds no config\.json"):
        load_model_config(str(tmp_path / "empty"))
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(ModelError, match=r"config\.json: field 'model_type' missing"):
        load_model_config(str(bad))
    with pytest.raises(ModelError, match=r"shipped model configs: llama-3\.1-70b"):
        load_model_config(str(tmp_path / "missing"))


def test_a_method_that_needs_weights_to_build_is_a_clear_error(config_only_dir):
    with pytest.raises(ConfigError, match="cannot be built without the model's weights"):
        estimate_memory(str(config_only_dir), "prefix")  # init: text runs the model
    assert estimate_memory(str(config_only_dir), "prefix", options={"init": "random"}).trainable_params > 0
