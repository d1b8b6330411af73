"""Prefix tuning: learned key/value vectors prepended in every attention layer (peft); the base stays frozen.

Options:

- ``num_virtual_tokens`` (default 20): prefix length;
- ``init``: ``text`` (default) starts the prefix as the keys/values the frozen model itself computes for
  ``init_text`` (cycled or cut to ``num_virtual_tokens`` tokens), so that at step 0 the model behaves
  exactly as if that text were written before every question; ``random`` is peft's N(0, 1) prefix, which
  the model attends to as noise (on the bundled model, arc_easy validation accuracy at step 0 fell from
  47% to 31%; with ``text`` it is 46%); ``zero`` is peft's all-zero prefix;
- ``init_text``: the text for ``init: text``;
- ``prefix_projection`` (default false): learn the prefix through a two-layer MLP (the paper's
  reparameterisation) instead of learning the key/values directly. The MLP starts random (peft), so
  ``init: text`` does not apply to it;
- ``encoder_hidden_size``: that MLP's width (default: the key/value width of one layer).

The artifact is a standard peft directory. peft saves the *projected* prefix, so a reloaded model needs no
MLP and is smaller than the trained one.

The prefix key/values are fed to the model as a KV cache and peft prepends ones to a 2D attention mask,
so the packed cloze layout (a 4D mask with per-option positions) cannot be used: options are scored as one
row per option instead (``supports_packing = False``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from transformers import AutoTokenizer, PreTrainedModel

from mcqtune.methods.base import PeftMethod, option_choice, positive_int_option, register

log = logging.getLogger(__name__)

INITS = ("text", "random", "zero")


def prefix_config(options: dict[str, Any]) -> PrefixTuningConfig:
    n_tokens = positive_int_option(options, "num_virtual_tokens", "prefix")
    init = option_choice(options, "init", INITS, "prefix")
    encoder_hidden_size = options["encoder_hidden_size"]
    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=n_tokens,
        prefix_projection=bool(options["prefix_projection"]),
        encoder_hidden_size=int(encoder_hidden_size) if encoder_hidden_size else None,
        init_weights="zero" if init == "zero" else None,
    )


@torch.no_grad()
def init_prefix_from_text(model: PeftModel, text: str) -> None:
    """Set the prefix to the frozen model's own keys/values for ``text`` (see ``init`` above).

    peft reads the prefix embedding (N, layers * 2 * kv_width) as (N, layers * 2, kv_heads, head_dim),
    with layer l's keys at slot 2l and its values at 2l + 1; the model's KV cache holds, per layer,
    keys and values of shape (batch, kv_heads, N, head_dim).
    """
    config = model.peft_config[model.active_adapter]
    n_tokens = config.num_virtual_tokens
    base = model.get_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base.name_or_path)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    ids = (ids * (n_tokens // len(ids) + 1))[:n_tokens]
    device = base.get_input_embeddings().weight.device
    # Under bf16 training the frozen linear weights are stored in bf16 (Method.prepare_base): run the
    # forward the way training will, under autocast, so that step 0 equals the text written in front.
    linear_dtype = next(m.weight.dtype for m in base.modules() if isinstance(m, torch.nn.Linear))
    half = linear_dtype if linear_dtype in (torch.bfloat16, torch.float16) else None
    with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=half is not None):
        cache = base(input_ids=torch.tensor([ids], device=device), use_cache=True).past_key_values
    slots = [tensor[0] for layer in cache.layers for tensor in (layer.keys, layer.values)]
    prefix = torch.stack(slots).permute(2, 0, 1, 3).reshape(n_tokens, -1)  # (N, layers * 2 * kv_width)
    embedding = model.prompt_encoder[model.active_adapter].embedding
    embedding.weight.copy_(prefix.to(embedding.weight.dtype))


@register
class PrefixMethod(PeftMethod):
    name = "prefix"
    description = "learned key/value prefixes in every attention layer (peft prefix tuning)"
    supports_packing = False
    supports_gradient_checkpointing = False  # its prefix lives in the key/value cache
    compare_order = 40
    step_seconds = 1.35
    eval_seconds_per_question = 0.16

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        config = prefix_config(options)
        peft_model = get_peft_model(model, config)
        if str(options["init"]).lower() == "text":
            if config.prefix_projection:
                log.warning(
                    "prefix: init 'text' does not apply with prefix_projection; the MLP starts random"
                )
            else:
                init_prefix_from_text(peft_model, str(options["init_text"]))
        return peft_model

    def check_fits(self, config: Any, directory: Path) -> None:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_width = head_dim * getattr(config, "num_key_value_heads", config.num_attention_heads)
        check_saved_shape(directory, config, kv_width, "prefix", "key/value width")


def check_saved_shape(directory: Path, config: Any, width: int, what: str, width_name: str) -> None:
    """peft sizes a prompt-learning artifact (prefix, soft prompt) from its saved config, not from the
    base, and would load one made for another model: check that its layers and width are the base's."""
    saved = PeftConfig.from_pretrained(str(directory))
    if (saved.num_layers, saved.token_dim) != (config.num_hidden_layers, width):
        raise ValueError(
            f"{what} for {saved.num_layers} layers of {width_name} {saved.token_dim}, "
            f"but the base has {config.num_hidden_layers} layers of width {width}"
        )
