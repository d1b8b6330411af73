"""Full fine-tuning: every weight of the base model is trained (the reference point for the PEFT methods).

The artifact is the whole model as a standard Hugging Face directory (``config.json`` +
``model*.safetensors``), so it also loads with ``AutoModelForCausalLM.from_pretrained`` outside mcqtune.
Loading it through mcqtune copies the saved tensors onto a freshly loaded base of the same architecture
and refuses a checkpoint that does not cover every weight.

Tied input/output embeddings stay tied: ``save_pretrained`` writes the shared tensor once and the copy
into the base's embedding also updates its LM head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from mcqtune.methods.base import Method, register


@register
class FullMethod(Method):
    name = "full"
    description = "every weight trained; the artifact is the whole model (HF safetensors)"
    frozen_base = False  # trains base weights: fp32 master weights under bf16 too
    shares_base = False  # the artifact is every weight: each one needs a model of its own

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(str(directory), safe_serialization=True)

    def attach(
        self, base: torch.nn.Module, directory: Path, options: dict[str, Any], name: str
    ) -> torch.nn.Module:
        files = sorted(Path(directory).glob("*.safetensors"))
        if not files:
            raise ValueError(f"{directory}: no *.safetensors weights")
        state: dict[str, torch.Tensor] = {}
        for file in files:  # one file, or the shards save_pretrained wrote for a large model
            state.update(load_file(str(file)))
        params = dict(base.named_parameters(remove_duplicate=False))
        unexpected = sorted(set(state) - set(params) - set(base.state_dict()))
        if unexpected:
            raise ValueError(f"weights not in the base model: {', '.join(unexpected[:5])}")
        # A missing name is fine only when it shares its tensor with a saved one (tied embeddings).
        saved_ids = {id(params[n]) for n in state if n in params}
        missing = sorted(n for n, p in params.items() if n not in state and id(p) not in saved_ids)
        if missing:
            raise ValueError(f"checkpoint lacks weights: {', '.join(missing[:5])}")
        base.load_state_dict(state, strict=False)  # raises on a shape mismatch
        return base
