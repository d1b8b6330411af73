"""The one small interface every fine-tuning method implements, and the registry that finds them.

A method knows how to (1) load the base model it needs (QLoRA quantizes it), (2) turn it into the model
to train (wrap, insert modules or freeze), (3) save only what it trained and (4) load that artifact
back onto a freshly loaded base. The training loop, scoring and evaluation never branch on the method.
Per-method defaults (learning rate, rank, bottleneck size...) live in ``configs/methods/<name>.yaml``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from mcqtune.models import ResolvedModel, load_model

ARTIFACT_SUBDIR = "artifact"


@dataclass
class ParameterReport:
    """What a user wants to know before training: how much is trained and what the frozen base costs."""

    trainable: int
    total: int
    frozen_base_bytes: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trainable": self.trainable,
            "total": self.total,
            "trainable_percent": round(self.trainable_percent, 4),
            "frozen_base_bytes": self.frozen_base_bytes,
        }

    def describe(self) -> str:
        return (
            f"trainable params: {self.trainable:,} of {self.total:,} ({self.trainable_percent:.3f}%), "
            f"frozen base weights: {self.frozen_base_bytes / 2**20:.1f} MiB"
        )


def _storage_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _logical_numel(param: torch.Tensor) -> int:
    """bitsandbytes packs two 4-bit values per byte; report the logical parameter count."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return param.numel()


def parameter_report(model: torch.nn.Module) -> ParameterReport:
    trainable = total = frozen_bytes = 0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:  # tied embeddings count once
            continue
        seen.add(id(param))
        n = _logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
        else:
            frozen_bytes += _storage_bytes(param)
    return ParameterReport(trainable, total, frozen_bytes)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trained tensors (for best-checkpoint snapshots and change tests)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of tensors by name, for proving which weights changed."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Method(ABC):
    """A fine-tuning method. Subclasses are registered with :func:`register`."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Whether scoring may pass a 4D attention mask and position ids (packed cloze options).
    supports_packing: ClassVar[bool] = True

    def load_base(
        self, resolved: ResolvedModel, options: dict[str, Any], device: torch.device
    ) -> PreTrainedModel:
        """The base model this method trains on (fp32 master weights by default)."""
        return load_model(resolved, torch.float32).to(device)

    def make_optimizer(
        self, params: list[torch.nn.Parameter], config: Any, device: torch.device
    ) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters; the fused kernel on CUDA, foreach on CPU."""
        return torch.optim.AdamW(
            params,
            lr=config.lr if config.lr is not None else 1e-4,
            weight_decay=config.weight_decay or 0.0,
            fused=device.type == "cuda",
            foreach=None if device.type == "cuda" else True,
        )

    @abstractmethod
    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        """Return the model to train, with only this method's parameters requiring grad."""

    @abstractmethod
    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write only what was trained, as safetensors, into ``directory`` (which exists)."""

    @abstractmethod
    def load(self, base: PreTrainedModel, directory: Path, options: dict[str, Any]) -> torch.nn.Module:
        """Attach a saved artifact to a freshly loaded base, ready for inference."""

    def merge(self, model: torch.nn.Module) -> PreTrainedModel:
        """Fold the trained parameters into a plain HF model (only methods that can)."""
        raise NotImplementedError(f"method '{self.name}' cannot be merged into the base model")


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}") from None
