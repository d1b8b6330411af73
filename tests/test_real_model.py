"""The bundled SmolLM2-135M end to end: zero-shot scoring and a short LoRA run that learns and reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcqtune.cli.main import main
from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.metrics import compute_metrics
from mcqtune.inference import Predictor
from mcqtune.models import load_model, resolve_precision
from mcqtune.prompt import PromptEncoder
from mcqtune.training.recipe import train

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
# What `eval` and `train` use here (precision auto): bf16 where the CPU has it, fp32 where bf16 would be
# emulated (AVX2-only hosts: ~100x slower). The behaviour under test holds in both.
HOST = resolve_precision("auto", CPU)


def test_zero_shot_letter_scoring_shows_the_letter_prior(bundled_resolved, tokenizer):
    """The seed formulation on MedMCQA: the 135M model answers 'A' almost always (README)."""
    rows = load_examples(bundled_path("medmcqa", "validation"), limit=24).examples
    model = load_model(bundled_resolved)
    metrics = compute_metrics(score_examples(model, PromptEncoder(tokenizer), rows, "letter", precision=HOST))
    assert metrics["n"] == 24
    assert metrics["predicted_letter_distribution"]["A"] >= 0.8
    cloze = compute_metrics(score_examples(model, PromptEncoder(tokenizer), rows, "cloze", precision=HOST))
    assert max(cloze["predicted_letter_distribution"].values()) < 0.8  # cloze has no letter prior


def test_short_lora_run_lowers_the_loss_and_reloads_identically(tmp_path):
    config = build_config(
        {
            "method": "lora",
            "objective": "letter",
            "train": "arc_easy",
            "validation": "arc_easy",
            "output": str(tmp_path / "lora"),
            "max_steps": 12,
            "batch_size": 2,
            "train_limit": 4,  # a fixed small set: the loss must fall as it is fitted (measured: to 0.12x)
            # the same option order every epoch, so 12 steps can memorise the 4 answers
            "shuffle_options": False,
            "eval_limit": 2,  # the last step is always validated: the smallest set (CI time, issue 28)
            "final_eval_limit": 8,
            "eval_steps": 12,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
        }
    )
    result = train(config, show_progress=False, keep_model=True)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    rows = load_examples(bundled_path("arc_easy", "validation"), limit=8).examples
    reloaded = Predictor.open(None, {"lora": tmp_path / "lora"}, device=CPU, precision="fp32")
    encoder = PromptEncoder(reloaded.tokenizer, reloaded.prompt("lora"))
    in_memory = score_examples(result.model, encoder, rows, "letter", precision=HOST)
    again = score_examples(reloaded.module("lora"), encoder, rows, "letter", precision=HOST)
    np.testing.assert_allclose(in_memory.scores, again.scores, atol=1e-3)
    saved = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert saved["validation"]["accuracy"] == compute_metrics(again)["accuracy"]

    # `mcqtune export`: the merged plain model scores like the adapter (fp32 on both sides)
    assert main(["export", "--adapter", str(tmp_path / "lora"), "--output", str(tmp_path / "hf")]) == 0
    exported = Predictor(str(tmp_path / "hf"), device=CPU, precision="fp32").module()
    assert not any("lora_" in n for n, _ in exported.named_parameters())
    unmerged = score_examples(reloaded.module("lora"), encoder, rows, "letter", precision="fp32").scores
    merged = score_examples(exported, encoder, rows, "letter", precision="fp32").scores
    np.testing.assert_allclose(merged, unmerged, atol=1e-3)
