"""One evaluation set-up (``evaluation/setup.py``): train's periodic validation, its final evaluation and
compare's worker read packing, row limit, precision and batch size from the same place."""

from __future__ import annotations

import torch

from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.setup import EvalSetup
from mcqtune.methods import get_method

CPU = torch.device("cpu")


def _config(method: str, **flags):
    return build_config({"method": method, "precision": "fp32", **flags})


def test_packing_follows_the_method_and_zero_shot_packs_when_asked():
    for method, packs in (("lora", True), ("prefix", False), ("prompt_tuning", False)):
        config = _config(method, packing=True)
        assert EvalSetup.of_run(config, get_method(method), CPU).packed is packs
        assert EvalSetup.of_run(config, get_method(method), CPU, final=False).packed is packs
        assert get_method(method).packs(True) is packs  # the trainer's own rule
        assert EvalSetup.of_run(config, None, CPU).packed is True  # the base model, untrained
    assert EvalSetup.of_run(_config("lora", packing=False), None, CPU).packed is False
    assert EvalSetup.of_run(_config("lora", packing=False), get_method("lora"), CPU).packed is False


def test_final_and_periodic_limits_batch_size_and_precision():
    config = _config("lora", eval_limit=3, final_eval_limit=5, eval_batch_size=7)
    rows = load_examples(bundled_path("arc-easy", "validation"), "auto").examples
    final = EvalSetup.of_run(config, get_method("lora"), CPU)
    periodic = EvalSetup.of_run(config, get_method("lora"), CPU, final=False)
    assert final.rows(rows) == rows[:5] and periodic.rows(rows) == rows[:3]
    assert final.score_kwargs() == {"batch_size": 7, "packed": True, "precision": "fp32", "device": CPU}
    everything = EvalSetup.of_run(_config("lora"), get_method("lora"), CPU)
    assert everything.limit is None and everything.rows(rows) == rows
