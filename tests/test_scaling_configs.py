"""Every accelerate/DeepSpeed config mcqtune ships loads with accelerate's own loaders, so a renamed key
breaks CI instead of a user's cluster job."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DeepSpeedPlugin

CONFIG_DIR = Path(str(resources.files("mcqtune") / "configs" / "accelerate"))
YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))
DEEPSPEED_JSONS = sorted(CONFIG_DIR.glob("*.json"))


def test_the_documented_configs_are_shipped():
    names = {p.name for p in YAMLS} | {p.name for p in DEEPSPEED_JSONS}
    assert {
        "ddp.yaml",
        "fsdp.yaml",
        "fsdp_qlora.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero2.json",
        "deepspeed_zero3.yaml",
        "deepspeed_zero3.json",
    } <= names
    docs = (Path(__file__).resolve().parent.parent / "docs" / "SCALING.md").read_text()
    for name in names:
        assert name in docs, f"docs/SCALING.md does not mention {name}"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_accelerate_yaml_loads_with_accelerates_loader(path):
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)  # from_yaml_file raises on an unknown top-level key
    assert config.num_machines == 1 and config.machine_rank == 0
    # Nested settings become `accelerate launch` arguments: each key must be one of its options.
    launch_options = {action.dest for action in launch_command_parser()._actions}
    nested = {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}
    unknown = sorted(set(nested) - launch_options)
    assert not unknown, f"{path.name}: keys accelerate launch does not know: {unknown}"


@pytest.mark.parametrize("path", [p for p in YAMLS if "deepspeed" in p.name], ids=lambda p: p.name)
def test_deepspeed_yaml_references_a_shipped_json_of_its_stage(path):
    config = load_config_from_file(str(path))
    reference = CONFIG_DIR / config.deepspeed_config["deepspeed_config_file"]
    assert reference.is_file()
    plugin = DeepSpeedPlugin(hf_ds_config=str(reference))
    stage = int(path.stem.removeprefix("deepspeed_zero"))
    assert plugin.zero_stage == stage
    assert config.deepspeed_config["zero3_init_flag"] is (stage == 3)


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=lambda p: p.name)
def test_deepspeed_json_has_the_keys_accelerate_fills(path):
    data = json.loads(path.read_text())
    # "auto" values are filled by accelerate from the Accelerator's settings: they must stay "auto".
    for key in ("gradient_accumulation_steps", "gradient_clipping", "train_micro_batch_size_per_gpu"):
        assert data[key] == "auto", key
    assert data["bf16"]["enabled"] == "auto"
    assert data["zero_optimization"]["stage"] in (2, 3)


def test_fsdp_qlora_loads_rank0_only_and_the_qlora_storage_option_exists():
    config = load_config_from_file(str(CONFIG_DIR / "fsdp_qlora.yaml"))
    assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    qlora_defaults = yaml.safe_load((CONFIG_DIR.parent / "methods" / "qlora.yaml").read_text())
    assert "quant_storage" in qlora_defaults["options"]
    assert "quant_storage=bf16" in (CONFIG_DIR / "fsdp_qlora.yaml").read_text()


def test_qlora_quant_storage_reaches_bitsandbytes():
    import torch

    from mcqtune.config import method_defaults
    from mcqtune.methods.qlora import quantization_config

    defaults = method_defaults("qlora")["method_options"]
    storage = quantization_config(defaults | {"quant_storage": "bf16"}).bnb_4bit_quant_storage
    assert storage == torch.bfloat16
    assert quantization_config(defaults).bnb_4bit_quant_storage == torch.uint8
    with pytest.raises(ValueError, match="quant_storage"):
        quantization_config(defaults | {"quant_storage": "int4"})
