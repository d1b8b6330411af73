"""Prompt tuning: learned input embeddings ("soft prompt") put in front of every input (peft); the base
stays frozen.

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning". Unlike prefix tuning,
which gives every attention layer its own key/values, only ``num_virtual_tokens`` input vectors train:
the fewest parameters of all the methods here (20 x 576 on the bundled model).

Options:

- ``num_virtual_tokens`` (default 20): soft prompt length;
- ``init``: ``text`` (default) starts the soft prompt as the embeddings of ``init_text``'s tokens (cycled
  or cut to ``num_virtual_tokens``; peft's TEXT init, which tokenizes with the tokenizer's special
  tokens, so a BOS comes first), so step 0 is the model reading that text first (tested);
  ``random`` is peft's random init;
- ``init_text``: the text for ``init: text``.

The soft prompt is concatenated to the input embeddings and peft prepends ones to a 2D attention mask and
drops position ids, so the packed cloze layout cannot be used (``supports_packing = False``): options are
scored one row per option, as for prefix tuning. It does not change a weight, so it cannot be merged and
``mcqtune export`` refuses it. The artifact is a standard peft directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import PreTrainedModel

from mcqtune.methods.base import PeftMethod, option_choice, positive_int_option, register
from mcqtune.methods.prefix import PrefixMethod, check_saved_shape

INITS = {"text": PromptTuningInit.TEXT, "random": PromptTuningInit.RANDOM}


def prompt_tuning_config(options: dict[str, Any], tokenizer_path: str) -> PromptTuningConfig:
    n_tokens = positive_int_option(options, "num_virtual_tokens", "prompt_tuning")
    init = option_choice(options, "init", INITS, "prompt_tuning")
    text = {"prompt_tuning_init_text": str(options["init_text"]), "tokenizer_name_or_path": tokenizer_path}
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=n_tokens,
        prompt_tuning_init=INITS[init],
        **(text if INITS[init] == PromptTuningInit.TEXT else {}),
    )


@register
class PromptTuningMethod(PeftMethod):
    name = "prompt_tuning"
    description = "learned input embeddings in front of every input (peft prompt tuning)"
    supports_packing = False
    compare_order = 80
    # Unmeasured on an idle CPU: prefix tuning's (one row per option, and 20 more positions per row).
    step_seconds = PrefixMethod.step_seconds
    eval_seconds_per_question = PrefixMethod.eval_seconds_per_question

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        return get_peft_model(model, prompt_tuning_config(options, model.name_or_path))

    def check_fits(self, config: Any, directory: Path) -> None:
        check_saved_shape(directory, config, config.hidden_size, "soft prompt", "embedding width")
