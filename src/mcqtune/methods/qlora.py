"""QLoRA: LoRA (same options as ``lora``) on a frozen base whose linear layers are 4-bit (bitsandbytes).

Options, besides LoRA's ``r``, ``alpha``, ``dropout``, ``target_modules``, ``use_rslora``, ``use_dora``:

- ``quant_type``: ``nf4`` (default) or ``fp4``;
- ``double_quant`` (default true): also quantize the per-block scales;
- ``compute_dtype``: ``auto`` (default: the run's precision, bf16 or fp32), ``bf16``, ``fp16`` or
  ``fp32``: the dtype 4-bit weights are dequantized to for each matmul. A fixed bf16 was the slow path on
  a CPU without native bf16 (AVX2), where every bf16 matmul is emulated;
- ``optimizer``: ``paged_adamw_32bit`` (default), ``paged_adamw_8bit`` or ``adamw``. Paged optimizers need
  CUDA; on CPU plain torch AdamW is used whatever is asked;
- ``quant_storage``: ``uint8`` (default), ``bf16``, ``fp16`` or ``fp32``: the dtype the packed 4-bit
  values are stored in (same bytes either way). FSDP shards only floating tensors of one dtype, so a
  sharded QLoRA run sets it to the compute dtype (``--option quant_storage=bf16``, docs/SCALING.md).

Only the decoder's linear layers are quantized: embeddings, norms and the LM head stay fp32
(transformers keeps the output embedding, and with it a tied input embedding, out of 4-bit).

The artifact is a standard peft LoRA directory; loading quantizes the base again (deterministic) and
attaches it. :meth:`QLoraMethod.merge` gives a plain fp32 model: see its docstring.

CPU note: on CPUs with AVX512-bf16, bitsandbytes (0.50) repacks a 4-bit weight in place the first time it
runs in eval mode without grad, for a faster inference kernel that has no backward. Training after an
evaluation (the loop validates at step 0) would then silently drop the gradient through every frozen 4-bit
layer, so :func:`keep_trainable_layout` switches that repacking off.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import bitsandbytes as bnb
import torch
from peft import (
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from transformers import BitsAndBytesConfig, PreTrainedModel

from mcqtune.methods.base import PeftMethod, register, release_mapped_weights
from mcqtune.methods.lora import LoraMethod, lora_config
from mcqtune.models import ResolvedModel, load_model, resolve_precision

log = logging.getLogger(__name__)

COMPUTE_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
# Measured with bench/qlora_cpu.py (docs/METHODS.md, 2026-12-07, batch 4, LoRA's step = 1): with the
# compute dtype the CPU computes natively a QLoRA step costs ~1.2x LoRA's (the 4-bit weights are
# dequantized for each matmul); bf16 compute on a CPU without native bf16 emulates every matmul: 12x.
NATIVE_CPU_FACTOR = 1.2
EMULATED_CPU_FACTOR = 12


def cpu_compute_note(compute: torch.dtype) -> tuple[int, str]:
    """(log level, what to tell a user) for QLoRA training on this CPU with ``compute`` matmuls."""
    native_bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    if compute == torch.float32 or (compute == torch.bfloat16 and native_bf16):
        return logging.INFO, (
            f"qlora on a CPU: a training step takes about {NATIVE_CPU_FACTOR}x LoRA's (each 4-bit weight "
            "is dequantized for every matmul); the 4-bit base saves memory that matters on a GPU, "
            "rarely on a CPU"
        )
    return logging.WARNING, (
        f"qlora: compute_dtype {str(compute).removeprefix('torch.')} on a CPU without native support for "
        f"it: every matmul is emulated, about {EMULATED_CPU_FACTOR}x LoRA's step time (measured, "
        "docs/METHODS.md); compute_dtype auto (the run's precision) or fp32 is the fast path here"
    )


OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw")
QUANT_STORAGE_DTYPES = {"uint8": torch.uint8, **COMPUTE_DTYPES}
# bitsandbytes' 4-bit layout: one absmax scale per block of 64 weights (fp32, or with double quantization
# an 8-bit code plus one fp32 scale per 256 of those blocks); 8-bit Adam keeps one fp32 scale per 256 values.
BLOCK_SIZE = 64
DOUBLE_QUANT_GROUP = 256
OPTIMIZER_STATE_BYTES = {"paged_adamw_8bit": 2 * (1 + 4 / 256), "paged_adamw_32bit": 8.0, "adamw": 8.0}


def quantization_config(options: dict[str, Any]) -> BitsAndBytesConfig:
    quant_type = str(options["quant_type"]).lower()
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"qlora: quant_type must be nf4 or fp4, got '{quant_type}'")
    compute = str(options["compute_dtype"]).lower()
    if compute == "auto":  # outside a training run (serving, eval): the host's own precision
        compute = resolve_precision("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if compute not in COMPUTE_DTYPES:
        raise ValueError(f"qlora: compute_dtype must be auto, bf16, fp16 or fp32, got '{compute}'")
    storage = str(options["quant_storage"]).lower()
    if storage not in QUANT_STORAGE_DTYPES:
        raise ValueError(f"qlora: quant_storage must be uint8, bf16, fp16 or fp32, got '{storage}'")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=bool(options["double_quant"]),
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute],
        bnb_4bit_quant_storage=QUANT_STORAGE_DTYPES[storage],
    )


def optimizer_choice(options: dict[str, Any]) -> str:
    choice = str(options["optimizer"]).lower()
    if choice not in OPTIMIZERS:
        raise ValueError(f"qlora: optimizer must be one of {', '.join(OPTIMIZERS)}, got '{choice}'")
    return choice


def keep_trainable_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes' CPU inference repacking, whose kernel has no backward (module docstring)."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@register
class QLoraMethod(PeftMethod):
    name = "qlora"
    description = "LoRA on a frozen 4-bit (NF4) base, bitsandbytes + peft"
    compare_order = 60
    step_seconds = 1.12
    eval_seconds_per_question = 0.078
    # the unmerged model runs its matmuls in bf16 (compute_dtype): scores move by a few hundredths
    export_tolerance = 0.1
    mixes_in_batch = LoraMethod.mixes_in_batch  # the same LoRA layers, on 4-bit weights

    def run_options(self, options: dict[str, Any], precision: str) -> dict[str, Any]:
        """``compute_dtype: auto`` becomes the run's precision (bf16 or fp32)."""
        if str(options.get("compute_dtype", "auto")).lower() != "auto":
            return options
        return {**options, "compute_dtype": precision}

    def load_base(
        self, resolved: ResolvedModel, options: dict[str, Any], device: torch.device
    ) -> PreTrainedModel:
        if device.type == "cpu":
            log.log(*cpu_compute_note(quantization_config(options).bnb_4bit_compute_dtype))
        # fp32 for everything bitsandbytes does not quantize; 4-bit weights are created on `device`.
        device_map = None if device.type == "cpu" else {"": device}
        model = load_model(
            resolved, torch.float32, quantization_config=quantization_config(options), device_map=device_map
        )
        keep_trainable_layout(model)
        if device.type == "cpu":
            release_mapped_weights(model)  # the fp32 file pages read for quantizing (base.py)
        return model

    def base_key(self, options: dict[str, Any]) -> str:
        """One 4-bit base per quantization layout, shared by every QLoRA artifact that uses it."""
        q = quantization_config(options)
        double = "double" if q.bnb_4bit_use_double_quant else "single"
        return f"4bit-{q.bnb_4bit_quant_type}-{double}-{q.bnb_4bit_compute_dtype}"

    def make_optimizer(
        self, params: list[torch.nn.Parameter], config: Any, device: torch.device
    ) -> torch.optim.Optimizer:
        choice = optimizer_choice(config.method_options)
        if choice == "adamw" or device.type != "cuda":
            if choice != "adamw":
                log.info("qlora: %s needs CUDA; using torch AdamW on %s", choice, device.type)
            return super().make_optimizer(params, config, device)
        paged = bnb.optim.PagedAdamW8bit if choice == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
        return paged(
            params, lr=config.lr if config.lr is not None else 2e-4, weight_decay=config.weight_decay or 0.0
        )

    def quantized_weight_bytes(self, options: dict[str, Any]) -> float | None:
        """4 bits per weight plus the per-block scales (quantization_config decides both)."""
        quant = quantization_config(options)
        scales = (1 + 4 / DOUBLE_QUANT_GROUP) if quant.bnb_4bit_use_double_quant else 4
        return 0.5 + scales / BLOCK_SIZE

    def optimizer_state_bytes(self, options: dict[str, Any]) -> float:
        """The paged optimizers' state on CUDA (on CPU every choice is AdamW: 8 bytes)."""
        return OPTIMIZER_STATE_BYTES[optimizer_choice(options)]

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        # Gradient checkpointing is every method's --gradient-checkpointing (the trainer's), not peft's here.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, lora_config(options))

    def merge(self, model: torch.nn.Module) -> PreTrainedModel:
        """A plain fp32 model with the LoRA update folded in (consumes ``model``, like LoRA's merge).

        peft's ``merge_and_unload`` on a 4-bit base re-quantizes each merged weight, which rounds
        much of a small LoRA update away and still leaves a 4-bit model. Instead: set the LoRA weights aside,
        unload them, dequantize the base to fp32 (transformers' ``dequantize``: every ``Linear4bit``
        becomes an ``nn.Linear`` holding its dequantized weight, the quantization config is dropped),
        re-attach LoRA to that fp32 base and merge there. The result equals the unmerged 4-bit model up to
        the rounding of its ``compute_dtype`` matmuls.
        """
        lora_state = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
        config = copy.deepcopy(model.peft_config[model.active_adapter])
        config.inference_mode = True
        base = model.unload().dequantize().float()
        fp32_model = get_peft_model(base, config)
        set_peft_model_state_dict(fp32_model, lora_state)
        merged = fp32_model.merge_and_unload()
        merged.is_loaded_in_4bit = False  # transformers' dequantize() leaves this flag behind
        merged.eval()
        return merged
