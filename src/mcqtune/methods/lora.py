"""LoRA: W' = W + (alpha / r) * B A on chosen linear layers, via peft; the base stays frozen.

The artifact is a standard peft adapter directory (``adapter_model.safetensors`` + ``adapter_config.json``),
loadable with ``peft.PeftModel.from_pretrained`` outside mcqtune.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import PreTrainedModel

from mcqtune.methods.base import PeftMethod, register

TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all-linear": "all-linear",
}


def lora_config(options: dict[str, Any]) -> LoraConfig:
    targets = options["target_modules"]
    if isinstance(targets, str):
        targets = TARGET_PRESETS.get(targets, [t.strip() for t in targets.split(",") if t.strip()])
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=int(options["r"]),
        lora_alpha=float(options["alpha"]),
        lora_dropout=float(options["dropout"]),
        target_modules=targets,
        use_rslora=bool(options["use_rslora"]),
        use_dora=bool(options["use_dora"]),
        bias="none",
    )


@register
class LoraMethod(PeftMethod):
    name = "lora"
    description = "low-rank update B·A on frozen linear layers (peft)"
    compare_order = 50
    step_seconds = 0.97
    eval_seconds_per_question = 0.064
    export_tolerance = 1e-3  # the fp32 merge vs the unmerged model: float noise

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        return get_peft_model(model, lora_config(options))

    def mixes_in_batch(self, options: dict[str, Any]) -> bool:
        """peft mixes LoRA adapters per row, but not DoRA ones."""
        return not options.get("use_dora", False)

    def merge(self, model: torch.nn.Module) -> PreTrainedModel:
        return model.merge_and_unload()
