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
from peft.tuners.lora import Linear as PeftLoraLinear
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


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer whose update is added inside the matmul that makes it.

    peft computes ``base(x) + B(A(x)) * scaling``: two passes over the (tokens x out_features) output
    (the scaling, the add) and a third in the backward (the scaling of the incoming gradient), per adapted
    layer. Here the scaling is the GEMM's ``alpha`` and the sum its ``beta = 1`` accumulation into the
    base output, in place (the base matmul's backward does not keep its output), so the wide passes go and
    the backward's scaling lands on the rank-r side. Same numbers up to float rounding; measured 1.1x a
    LoRA training step at fp32 (docs/PERFORMANCE.md, lever log). Anything else peft's layer does (several
    or mixed adapters, dropout while training, DoRA and other variants, merged weights, quantized bases,
    bias on B, autocast, ZeRO-3 partitioned weights) goes to peft's own forward.
    """

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fused = self._fused_adapter(x) if not args and not kwargs else None
        if fused is None:
            return super().forward(x, *args, **kwargs)
        base, lora_a, lora_b = self.base_layer, self.lora_A[fused], self.lora_B[fused]
        flat = x.reshape(-1, x.shape[-1])
        out = flat @ base.weight.t() if base.bias is None else torch.addmm(base.bias, flat, base.weight.t())
        out.addmm_(flat @ lora_a.weight.t(), lora_b.weight.t(), alpha=self.scaling[fused])
        return out.view(*x.shape[:-1], out.shape[-1])

    def _fused_adapter(self, x: torch.Tensor) -> str | None:
        """The one active plain LoRA adapter this call can fuse, or None for peft's forward.

        Not under autocast: there peft rounds the update to bf16 before the sum, and a model reloaded for
        bf16 inference (its LoRA weights stored in bf16) must give the trained model's scores bit for bit.
        """
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
            return None
        dropout = self.lora_dropout[name]
        if not isinstance(dropout, torch.nn.Identity) and dropout.training:
            return None
        if type(self.base_layer) is not torch.nn.Linear or torch.is_autocast_enabled(x.device.type):
            return None
        weights = (self.base_layer.weight, self.lora_A[name].weight, self.lora_B[name].weight)
        # DeepSpeed ZeRO-3 gathers a partitioned weight only in its own module's forward, which the fused
        # path does not call (its parameters carry ``ds_id``)
        if any(hasattr(w, "ds_id") for w in weights):
            return None
        return name if all(w.dtype == x.dtype for w in weights) else None


def fuse_lora_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Give peft's plain LoRA linear layers the fused forward (:class:`FusedLoraLinear` adds no state, so
    the layer keeps its weights, adapters and everything else peft does with it)."""
    for module in model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
    return model


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
        peft_model = fuse_lora_layers(get_peft_model(model, config))
        if init in MUTATING_INITS:
            keep_initial_adapter(peft_model)
        if ratio != 1.0:
            for name, param in peft_model.named_parameters():
                if param.requires_grad and ".lora_B." in name:
                    setattr(param, LR_RATIO, ratio)
        return peft_model

    def attach(
        self, model: torch.nn.Module, directory: Path, options: dict[str, Any], name: str
    ) -> torch.nn.Module:
        return fuse_lora_layers(super().attach(model, directory, options, name))

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
