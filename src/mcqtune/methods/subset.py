"""Partial fine-tuning: only the top-K decoder layers and the final norm are trained; the rest stays frozen.

Options:

- ``top_k`` (default 10, a third of the bundled model's 30 layers): how many of the last decoder layers to
  train. On ARC-Easy (ranking, 150 steps) the top 4 layers stayed at zero-shot accuracy at any learning
  rate tried (49%; lr 1e-4, 5e-4, 2e-3) while the top 10 reached 62.8%;
- ``train_head`` (default false): also train the LM head. Models that tie their input and output
  embeddings (the bundled SmolLM2 does) share one tensor, so this trains the input embedding too, which
  is ~20% of a 135M model and makes every token's representation move;
- ``extra_trainable``: parameter-name substrings to train as well (e.g. ``["input_layernorm"]``).

The artifact is one safetensors file holding only the trained tensors under their parameter names, with
the trained layer indices in its metadata. Attached artifacts share the base: activating one points the
base's top-K parameters at its tensors (no copy) and activating none points them back at the base's own
tensors, which are kept once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from mcqtune.methods.base import Method, register, untied_head_copy

WEIGHTS_FILE = "subset.safetensors"
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f")


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The module list of decoder blocks (``model.layers`` for Llama) and its qualified name."""
    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return name, module
    raise ValueError(f"cannot find the {n_layers} decoder layers of {type(model).__name__}")


def final_norm_prefix(model: PreTrainedModel) -> str | None:
    """Qualified name of the norm after the last decoder layer (``model.norm`` for Llama), if any."""
    decoder = model.get_decoder()
    decoder_name = next(name for name, module in model.named_modules() if module is decoder)
    for attr in FINAL_NORM_NAMES:
        if isinstance(getattr(decoder, attr, None), torch.nn.Module):
            return f"{decoder_name}.{attr}" if decoder_name else attr
    return None


def selected_names(model: PreTrainedModel, options: dict[str, Any]) -> set[str]:
    """Names (as ``named_parameters`` lists them) of the parameters to train."""
    layers_name, layers = decoder_layers(model)
    top_k = int(options["top_k"])
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"subset: top_k must be between 1 and {len(layers)}, got {top_k}")
    indices = list(range(len(layers) - top_k, len(layers)))
    prefixes = [f"{layers_name}.{i}." for i in indices]
    norm = final_norm_prefix(model)
    if norm:
        prefixes.append(norm + ".")
    extra = options["extra_trainable"] or []
    if isinstance(extra, str):
        extra = [extra]
    head_ids = set()
    if options["train_head"]:
        head_ids = {id(p) for p in model.get_output_embeddings().parameters()}
    return {
        name
        for name, param in model.named_parameters()
        if name.startswith(tuple(prefixes)) or id(param) in head_ids or any(s in name for s in extra)
    }


@register
class SubsetMethod(Method):
    name = "subset"
    description = "top-K decoder layers + final norm trained (optionally the LM head); the rest frozen"
    frozen_base = False  # trains base weights: fp32 master weights under bf16 too
    compare_order = 20
    step_seconds = 0.35
    eval_seconds_per_question = 0.052

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        names = selected_names(model, options)
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
        return model

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        # named_parameters() lists a tied tensor once, so safetensors never sees shared storage.
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        layers_name, _ = decoder_layers(model)
        prefix = layers_name + "."
        layers = sorted({int(n[len(prefix) :].split(".")[0]) for n in tensors if n.startswith(prefix)})
        metadata = {"format": "pt", "layers": ",".join(str(i) for i in layers)}
        save_file(tensors, str(Path(directory) / WEIGHTS_FILE), metadata=metadata)

    def attach(
        self, model: torch.nn.Module, directory: Path, options: dict[str, Any], name: str
    ) -> torch.nn.Module:
        path = Path(directory) / WEIGHTS_FILE
        state = load_file(str(path))
        params = dict(model.named_parameters(remove_duplicate=False))
        for param_name, value in state.items():
            if param_name not in params:
                raise ValueError(f"{path}: '{param_name}' is not a parameter of the base model")
            if params[param_name].shape != value.shape:
                have, want = tuple(value.shape), tuple(params[param_name].shape)
                raise ValueError(f"{path}: '{param_name}' has shape {have}, the base has {want}")
        state |= untied_head_copy(model, state)  # an inference base's bf16 head follows a trained embedding
        swaps = _swaps(model)
        for param_name in state:
            swaps.originals.setdefault(param_name, params[param_name].data)
        device = next(iter(params.values())).device
        swaps.artifacts[name] = {n: v.to(device) for n, v in state.items()}
        return model

    def activate(self, model: torch.nn.Module, name: str | None) -> torch.nn.Module:
        swaps = _swaps(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        for param_name, tensor in {**swaps.originals, **swaps.artifacts.get(name, {})}.items():
            params[param_name].data = tensor
        return model

    def detach(self, model: torch.nn.Module, name: str) -> None:
        """Forget the artifact's tensors (the caller has deactivated it: the base's own are in place)."""
        del _swaps(model).artifacts[name]


@dataclass
class _Swaps:
    """The trained tensors of each attached artifact, and the base's own tensors they replace."""

    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    artifacts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _swaps(model: torch.nn.Module) -> _Swaps:
    if not hasattr(model, "mcqtune_subset_swaps"):
        model.mcqtune_subset_swaps = _Swaps()
    return model.mcqtune_subset_swaps
