"""Bottleneck adapters (down-projection -> nonlinearity -> up-projection, residual) in every decoder layer,
via AdapterHub ``adapters``; the base stays frozen.

Options:

- ``config``: ``pfeiffer`` (default; one adapter after the feed-forward block, ``SeqBnConfig``) or
  ``houlsby`` (after attention and after the feed-forward block, ``DoubleSeqBnConfig``);
- ``bottleneck`` (default 16): adapter width; becomes ``reduction_factor = hidden_size / bottleneck``.
  ``reduction_factor`` may be given instead and then wins;
- ``non_linearity``: ``relu`` (default), ``swish`` or ``gelu`` (any name transformers' ACT2FN knows);
- ``init_weights``: ``mam_adapter`` (default: the up-projection starts at zero, so the untrained adapter
  is the identity and step 0 is the zero-shot model, as with LoRA), ``bert`` (AdapterHub's default,
  N(0, 0.02) everywhere: on the bundled model it moved validation accuracy at step 0 from 47% to 42%)
  or ``houlsby``.

The artifact is AdapterHub's own format written with safetensors (``adapter_config.json`` +
``adapter.safetensors``), loadable with ``model.load_adapter`` outside mcqtune. ``with_head=False``:
AdapterHub would otherwise also save the (frozen) LM head, which the bundled model ties to its input
embedding: 108 MiB of untrained weights.

Packed cloze scoring: AdapterHub's forward context reads the attention mask as 2D (it computes
per-row padding offsets with ``argmax`` for ReFT interventions) and fails on the 4D bool mask of packed
options. Bottleneck adapters never use those offsets, so :func:`allow_packed_masks` hides a 4D mask from
that bookkeeping only; the model itself still receives it. The tests check packed == one row per option.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adapters
import torch
from adapters import DoubleSeqBnConfig, SeqBnConfig
from transformers import PreTrainedModel

from mcqtune.methods.base import Method, register

ADAPTER_NAME = "mcqtune"
CONFIGS = {"pfeiffer": SeqBnConfig, "houlsby": DoubleSeqBnConfig}
NO_ACTIVE_ADAPTER_WARNING = "none are activated for the forward pass"


def _hide_no_active_adapter_warning(record: logging.LogRecord) -> bool:
    return NO_ACTIVE_ADAPTER_WARNING not in record.getMessage()


@contextlib.contextmanager
def activating() -> Iterator[None]:
    """AdapterHub's ``set_active_adapters`` resets the adapters inside a forward context it opens before
    the new adapter is active, which logs "there are adapters available but none are activated for the
    forward pass" on every activation although no forward pass runs. Hide that one message meanwhile."""
    logger = logging.getLogger("adapters.model_mixin")
    logger.addFilter(_hide_no_active_adapter_warning)
    try:
        yield
    finally:
        logger.removeFilter(_hide_no_active_adapter_warning)


def adapter_config(options: dict[str, Any], hidden_size: int) -> SeqBnConfig:
    kind = str(options["config"]).lower()
    if kind not in CONFIGS:
        raise ValueError(f"adapter: config must be one of {', '.join(CONFIGS)}, got '{kind}'")
    if options["reduction_factor"] is not None:
        reduction = float(options["reduction_factor"])
    else:
        bottleneck = int(options["bottleneck"])
        if not 1 <= bottleneck <= hidden_size:
            raise ValueError(f"adapter: bottleneck must be between 1 and {hidden_size}, got {bottleneck}")
        # AdapterHub sizes the bottleneck as int(hidden // reduction_factor); +0.5 keeps a non-divisor exact.
        if hidden_size % bottleneck == 0:
            reduction = hidden_size // bottleneck
        else:
            reduction = hidden_size / (bottleneck + 0.5)
    return CONFIGS[kind](
        reduction_factor=reduction,
        non_linearity=str(options["non_linearity"]),
        init_weights=str(options["init_weights"]),
    )


def allow_packed_masks(model: PreTrainedModel) -> None:
    """Let AdapterHub's forward-context bookkeeping skip a 4D attention mask (see the module docstring)."""
    original = type(model).forward_context

    def forward_context(self, context, *args, **kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            kwargs = {**kwargs, "attention_mask": None}  # only feeds ReFT's padding offsets
        return original(self, context, *args, **kwargs)

    model.forward_context = types.MethodType(forward_context, model)


@register
class AdapterMethod(Method):
    name = "adapter"
    description = "bottleneck adapters (Pfeiffer or Houlsby) in every layer, AdapterHub"
    compare_order = 30
    step_seconds = 0.68
    eval_seconds_per_question = 0.057

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        adapters.init(model)
        model.add_adapter(ADAPTER_NAME, config=adapter_config(options, model.config.hidden_size))
        with activating():
            model.train_adapter(ADAPTER_NAME)  # freezes the base, activates the adapter
        allow_packed_masks(model)
        return model

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_adapter(str(directory), ADAPTER_NAME, with_head=False, use_safetensors=True)

    def attach(
        self, model: torch.nn.Module, directory: Path, options: dict[str, Any], name: str
    ) -> torch.nn.Module:
        if not isinstance(model, adapters.ModelAdaptersMixin):
            adapters.init(model)
            allow_packed_masks(model)
        info: dict[str, list[str]] = {}
        model.load_adapter(
            str(directory),
            load_as=name,
            set_active=False,
            with_head=False,
            use_safetensors=True,
            loading_info=info,
        )
        # AdapterHub only logs weights it could not place; an artifact for another base must fail instead.
        mismatched = info.get("missing_keys", []) + info.get("unexpected_keys", [])
        if mismatched:
            model.delete_adapter(name)  # the artifacts attached before stay as they were
            raise ValueError(f"adapter weights do not fit this base model: {', '.join(mismatched[:5])}")
        return model

    def activate(self, model: torch.nn.Module, name: str | None) -> torch.nn.Module:
        with activating():
            model.set_active_adapters(name)
        return model

    def detach(self, model: torch.nn.Module, name: str) -> None:
        model.delete_adapter(name)
