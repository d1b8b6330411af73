"""IA3: learned vectors that rescale keys, values and feed-forward activations (peft); the base stays frozen.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning". Each target linear layer gets one vector: the output of an attention target is multiplied by
it, the *input* of a feed-forward target. Far fewer parameters than LoRA (one number per channel).

Options:

- ``target_modules``: names of the linear layers to rescale, a list or a comma-separated string
  (Llama-style default in the YAML: ``k_proj``, ``v_proj``, ``down_proj``, the paper's keys, values and
  feed-forward activations);
- ``feedforward_modules``: those of ``target_modules`` whose input is scaled (default ``down_proj``).

The vectors start at one, so step 0 is the zero-shot model. The artifact is a standard peft directory.
:meth:`IA3Method.merge` folds each vector into its layer's weight (a row or column scaling), so
``mcqtune export`` writes a plain model.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import IA3Config, TaskType, get_peft_model
from transformers import PreTrainedModel

from mcqtune.methods.base import MergeablePeftMethod, register


def module_names(value: str | list[str]) -> list[str]:
    """A list of module names from a YAML list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    return [str(item).strip() for item in items if str(item).strip()]


def ia3_config(options: dict[str, Any]) -> IA3Config:
    targets = module_names(options["target_modules"])
    feedforward = module_names(options["feedforward_modules"])
    if not targets:
        raise ValueError("ia3: target_modules is empty")
    outside = sorted(set(feedforward) - set(targets))
    if outside:
        raise ValueError(
            f"ia3: feedforward_modules must be among target_modules ({', '.join(targets)}); "
            f"not there: {', '.join(outside)}"
        )
    return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=feedforward)


@register
class IA3Method(MergeablePeftMethod):
    name = "ia3"
    description = "learned rescaling of keys, values and feed-forward activations (peft IA3)"
    compare_order = 70
    # Final evaluation measured at 20.3 questions/s (docs/METHODS.md); the step time is a guess between
    # adapter's and LoRA's: the measured run shared its CPU (7.4 s/step), so it is no idle figure.
    step_seconds = 0.8
    eval_seconds_per_question = 0.049

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        return get_peft_model(model, ia3_config(options))
