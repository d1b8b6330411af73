"""LoRA: W' = W + (alpha / r) * B A on chosen linear layers, via peft; the base stays frozen.

The LoRA variants are options of this one method, and named presets of it (configs/methods/dora.yaml
and the others with ``preset_of: lora``; docs/DECISIONS.md says why):

- ``use_dora``: DoRA, the weight's magnitude and direction trained apart (Liu et al. 2024);
- ``use_rslora``: rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023);
- ``init``: ``kaiming`` (peft's default: A random, B zero, so step 0 is the zero-shot model),
  ``gaussian``, or one that moves part of the base weight into the adapter: ``pissa`` (the top-r singular
  directions of W, Meng et al. 2024) or ``olora`` (the first r columns of W's QR decomposition, Büyükakyüz
  2024). Those change the frozen base in memory, so the artifact is saved converted to a plain LoRA of
  rank 2r (B A - B0 A0, peft's conversion) that attaches to the unchanged base like any other;
- ``loraplus_lr_ratio``: LoRA+ (Hayou et al. 2024), B learns at this multiple of the learning rate (1:
  plain LoRA).

The artifact is a standard peft adapter directory (``adapter_model.safetensors`` + ``adapter_config.json``),
loadable with ``peft.PeftModel.from_pretrained`` outside mcqtune.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from mcqtune.methods.base import LR_RATIO, MergeablePeftMethod, option_choice, register

TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all-linear": "all-linear",
}
# ``init`` option -> peft's init_lora_weights. The mutating ones move part of W into A and B.
INITS: dict[str, bool | str] = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
MUTATING_INITS = ("pissa", "olora")
# Where apply() leaves the initial adapter of a mutating init, for the conversion at save().
INITIAL_ADAPTER = "_mcqtune_initial_adapter"


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


def init_choice(options: dict[str, Any]) -> str:
    init = option_choice(options, "init", INITS, "lora")
    if init in MUTATING_INITS and bool(options["use_dora"]):
        # peft's conversion to a plain LoRA leaves DoRA's magnitudes measured on the changed base
        raise ValueError(f"lora: init '{init}' cannot be combined with use_dora")
    return init


def loraplus_ratio(options: dict[str, Any]) -> float:
    ratio = float(options["loraplus_lr_ratio"])
    if not ratio > 0:
        raise ValueError(f"lora: loraplus_lr_ratio must be positive, got {ratio}")
    return ratio


def keep_initial_adapter(model: PeftModel) -> None:
    """Save the adapter as a mutating init left it, so that save() can convert the trained one to a plain
    LoRA; the directory lives as long as the model."""
    holder = tempfile.TemporaryDirectory(prefix="mcqtune-lora-init-")
    model.save_pretrained(holder.name, safe_serialization=True)
    setattr(model, INITIAL_ADAPTER, holder)


@register
class LoraMethod(MergeablePeftMethod):
    name = "lora"
    description = "low-rank update B·A on frozen linear layers (peft)"
    compare_order = 50
    step_seconds = 0.97
    eval_seconds_per_question = 0.064
    export_tolerance = 1e-3  # the fp32 merge vs the unmerged model: float noise

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        init = init_choice(options)
        ratio = loraplus_ratio(options)
        config = dataclasses.replace(lora_config(options), init_lora_weights=INITS[init])
        peft_model = get_peft_model(model, config)
        if init in MUTATING_INITS:
            keep_initial_adapter(peft_model)
        if ratio != 1.0:
            for name, param in peft_model.named_parameters():
                if param.requires_grad and ".lora_B." in name:
                    setattr(param, LR_RATIO, ratio)
        return peft_model

    def mixes_in_batch(self, options: dict[str, Any]) -> bool:
        """peft mixes LoRA adapters per row, but not DoRA ones."""
        return not options.get("use_dora", False)

    def own_layers_in_inference_dtype(self, options: dict[str, Any]) -> bool:
        """Not for DoRA: peft casts a layer's input to lora_A's dtype, and DoRA takes the weight norm in
        the input's dtype, so bf16 LoRA weights would take it in bf16 (measured: up to 0.9 log-prob away
        from the trained model on the bundled one, with flipped answers)."""
        return not options.get("use_dora", False)

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        initial = getattr(model, INITIAL_ADAPTER, None)
        if initial is None:
            super().save(model, directory)
            return
        model.save_pretrained(
            str(directory), safe_serialization=True, path_initial_model_for_weight_conversion=initial.name
        )
