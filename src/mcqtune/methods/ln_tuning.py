"""LayerNorm tuning: only the normalisation layers' scales train (peft LN tuning); the rest stays frozen.

Zhao et al. 2023, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning". peft
trains a copy of each target norm layer (the original stays as it was), so the base is untouched and
artifacts of this method attach side by side on one base. Llama-style default targets: both norms of
every decoder layer and the final norm (30 x 2 x 576 + 576 = 35,136 numbers on the bundled model).

Options:

- ``target_modules``: names of the norm layers to tune, a list or a comma-separated string.

The scales start as the model's own, so step 0 is the zero-shot model. Norms act per position, so packed
cloze scoring works. Artifacts tuning different norms share one model (:meth:`LnTuningMethod.activate`).
:meth:`LnTuningMethod.merge` puts the tuned copies in place of the originals, so
``mcqtune export`` writes a plain model. The artifact is a standard peft directory.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LNTuningConfig, TaskType, get_peft_model
from peft.tuners.ln_tuning.layer import LNTuningLayer
from transformers import PreTrainedModel

from mcqtune.methods.base import MergeablePeftMethod, register
from mcqtune.methods.ia3 import IA3Method, module_names


def ln_tuning_config(options: dict[str, Any]) -> LNTuningConfig:
    targets = module_names(options["target_modules"])
    if not targets:
        raise ValueError("ln_tuning: target_modules is empty")
    return LNTuningConfig(task_type=TaskType.CAUSAL_LM, target_modules=targets)


@register
class LnTuningMethod(MergeablePeftMethod):
    name = "ln_tuning"
    description = "only the normalisation layers' scales train (peft LayerNorm tuning)"
    compare_order = 75
    # Unmeasured on an idle CPU: IA3's (a few scales per layer, backward through every layer).
    step_seconds = IA3Method.step_seconds
    eval_seconds_per_question = IA3Method.eval_seconds_per_question

    def apply(self, model: PreTrainedModel, options: dict[str, Any]) -> torch.nn.Module:
        return get_peft_model(model, ln_tuning_config(options))

    def activate(self, model: torch.nn.Module, name: str | None) -> torch.nn.Module:
        """peft makes ``name`` active in every tuned norm, also in norms another attached artifact tunes
        and this one does not, which then fail; those compute as the base's norm instead."""
        model = super().activate(model, name)
        if name is not None:
            for module in model.modules():
                if isinstance(module, LNTuningLayer) and name not in module.ln_tuning_layers:
                    module.set_adapter([])
        return model
