"""Every registered method (presets included) learns, each preset is what its name says, and a run keeps
its best validated state.

Learning: the real optimizer step (:class:`~mcqtune.training.trainer.Trainer`) at the method's default
learning rate, on a fixed batch of two short questions, until the loss is under LEARNED x its start: a
sign or scale bug in a method (or a learning rate that cannot move it) fails here, where the tests of
tests/test_methods.py (weights change, losses are finite) pass.

Presets: the one property that makes each one that preset, read off the built peft/AdapterHub modules
of the tiny random Llama (tests/conftest.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_OPTIONS
from mcqtune.artifacts import ADAPTER_DIR, MANIFEST, METRICS
from mcqtune.config import build_config, method_option_defaults
from mcqtune.data import MCQExample, bundled_path, load_examples
from mcqtune.evaluation.setup import EvalSetup
from mcqtune.methods import METHODS, get_method
from mcqtune.models import load_model, load_tokenizer, resolve_model
from mcqtune.prompt import PromptEncoder
from mcqtune.training import recipe
from mcqtune.training.recipe import train
from mcqtune.training.trainer import Trainer

CPU = torch.device("cpu")
# Two short questions with different answer positions: the model must tell them apart, not just learn
# a favourite option.
ROWS = [
    MCQExample("sky", "Which colour is the sky?", ("blue", "green", "red", "black"), 0),
    MCQExample("cows", "What do cows drink?", ("oil", "water", "milk", "sand"), 1),
]
LEARNED = 0.6  # the loss must fall under this share of its start
MAX_STEPS = 120  # IA3 (scales that start at one) is the slowest: ~70 steps; most methods need ~15


def fixed_batch_trainer(method_name: str, model_dir: Path, **settings: Any) -> Trainer:
    config = build_config(
        {
            "method": method_name,
            "objective": "ranking",
            "model": str(model_dir),
            "train": "arc_easy",
            "max_steps": MAX_STEPS,
            "batch_size": len(ROWS),
            "precision": "fp32",
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "method_options": TINY_OPTIONS.get(method_name, {}),
            **settings,
        }
    )
    resolved = resolve_model(str(model_dir))
    torch.manual_seed(0)
    return Trainer(config, resolved, PromptEncoder(load_tokenizer(resolved)), ROWS)


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_every_method_learns_a_fixed_batch_at_its_default_lr(method_name, tiny_model_dir):
    trainer = fixed_batch_trainer(method_name, tiny_model_dir)
    assert trainer.config.lr == build_config({"method": method_name, "output": "unused"}).lr  # its YAML's
    features = trainer.objective.encode(ROWS)
    # Each step's loss is measured before its update, on the same two rows: the model's loss so far.
    losses = [trainer.step(features).loss]
    while losses[-1] > LEARNED * losses[0] and len(losses) < MAX_STEPS:
        losses.append(trainer.step(features).loss)
    assert losses[0] > 1.0, losses[0]  # four options: about ln 4 untrained
    assert losses[-1] <= LEARNED * losses[0], (
        f"{method_name} at lr {trainer.config.lr:g}: loss {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"after {len(losses)} steps (min {min(losses):.3f})"
    )


# ------------------------------------------------------------------------------- what makes a preset
def applied(method_name: str, model_dir: Path, **options: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The method's model right after apply() on a fresh fp32 base, and the options it got."""
    options = {**method_option_defaults(method_name), **options}
    torch.manual_seed(0)
    return get_method(method_name).apply(load_model(resolve_model(str(model_dir))), options), options


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def original_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in load_model(resolve_model(str(model_dir))).named_parameters()}


def base_name(peft_module_name: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj`` -> ``model.layers.0.self_attn.q_proj.weight``"""
    return peft_module_name.removeprefix("base_model.model.") + ".weight"


@pytest.mark.parametrize(("method_name", "root"), [("rslora", math.sqrt), ("lora", lambda r: r)])
def test_rslora_scales_the_update_by_alpha_over_sqrt_r(method_name, root, tiny_model_dir):
    """rsLoRA: the layer adds alpha / sqrt(r) * B A x (LoRA: alpha / r), measured on the forward pass."""
    model, options = applied(method_name, tiny_model_dir, r=4, alpha=8)
    expected = options["alpha"] / root(options["r"])
    assert expected == (4.0 if method_name == "rslora" else 2.0)
    layers = lora_layers(model)
    assert layers
    torch.manual_seed(1)
    x = torch.randn(3, 64)
    for layer in layers.values():
        assert layer.scaling["default"] == pytest.approx(expected)
    layer = layers["base_model.model.model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        delta = layer(x) - layer.base_layer(x)
        update = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    torch.testing.assert_close(delta, expected * update, atol=1e-5, rtol=1e-5)


def test_dora_trains_a_magnitude_vector_per_output_channel(tiny_model_dir):
    """DoRA: each adapted layer has a trainable magnitude, one per output channel, started at the norm
    of that channel's weight row (so the untrained model is the base); plain LoRA has none."""
    model, _ = applied("dora", tiny_model_dir)
    weights = original_weights(tiny_model_dir)
    layers = lora_layers(model)
    assert layers
    for name, layer in layers.items():
        magnitude = layer.lora_magnitude_vector["default"].weight
        weight = weights[base_name(name)]
        assert magnitude.requires_grad and magnitude.shape == (weight.shape[0],)
        torch.testing.assert_close(magnitude.detach(), weight.norm(dim=1), atol=1e-6, rtol=1e-5)
    plain, _ = applied("lora", tiny_model_dir)
    assert not [n for n, _ in plain.named_parameters() if "magnitude" in n]


def test_pissa_starts_from_the_principal_singular_directions(tiny_model_dir):
    """PiSSA: the adapter starts as W's top-r singular part U_r S_r V_r^T and the frozen base holds the
    residual, so base + adapter is still W."""
    model, options = applied("pissa", tiny_model_dir, r=4)
    weights = original_weights(tiny_model_dir)
    for name, layer in lora_layers(model).items():
        weight = weights[base_name(name)]
        adapter = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        r = options["r"]
        principal = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        torch.testing.assert_close(adapter.detach(), principal, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.base_layer.weight.detach(), weight - principal, atol=1e-4, rtol=1e-4)


def test_olora_starts_from_an_orthonormal_basis(tiny_model_dir):
    """OLoRA: B starts as the first r columns of Q in W = QR (orthonormal columns), A as R's first r rows;
    the frozen base holds W minus that adapter."""
    model, options = applied("olora", tiny_model_dir, r=4)
    weights = original_weights(tiny_model_dir)
    r = options["r"]
    for name, layer in lora_layers(model).items():
        weight = weights[base_name(name)]
        b, a = layer.lora_B["default"].weight.detach(), layer.lora_A["default"].weight.detach()
        torch.testing.assert_close(b.T @ b, torch.eye(r), atol=1e-5, rtol=0)
        q, upper = torch.linalg.qr(weight)
        torch.testing.assert_close(b @ a, q[:, :r] @ upper[:r], atol=1e-4, rtol=1e-4)
        moved = layer.scaling["default"] * b @ a
        torch.testing.assert_close(layer.base_layer.weight.detach(), weight - moved, atol=1e-4, rtol=1e-4)


def test_loraplus_optimizer_groups_run_b_at_the_ratio(tiny_model_dir):
    """LoRA+ through the trainer's own optimizer: A's group at the configured lr, B's at 16x it (plain
    LoRA: one group)."""
    trainer = fixed_batch_trainer("loraplus", tiny_model_dir, lr=1e-3)
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    ratio = method_option_defaults("loraplus")["loraplus_lr_ratio"]
    assert ratio > 1
    for name, param in trainer.named_trainable.items():
        assert lr_of[id(param)] == pytest.approx(1e-3 * (ratio if ".lora_B." in name else 1.0)), name
    plain = fixed_batch_trainer("lora", tiny_model_dir, lr=1e-3)
    assert [g["lr"] for g in plain.optimizer.param_groups] == [1e-3]


@pytest.mark.parametrize(
    ("method_name", "places"), [("adapter", {"output"}), ("houlsby", {"attention", "output"})]
)
def test_bottleneck_adapter_placement(method_name, places, tiny_model_dir):
    """Pfeiffer (the adapter's default): one adapter per layer, after the feed-forward block; Houlsby: one
    after attention too, and each placed adapter takes part in the forward pass."""
    model, _ = applied(method_name, tiny_model_dir)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    found = {place for place in ("attention", "output") for n in trained if f".{place}_adapters." in n}
    assert found == places
    for layer in range(model.config.num_hidden_layers):
        assert {
            p for p in places if any(f"layers.{layer}." in n and f".{p}_adapters." in n for n in trained)
        } == places
    ids = torch.tensor([[1, 400, 2000, 35, 9]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for place in places:  # the up-projection starts at zero: give each placed adapter a real output
            for n, p in model.named_parameters():
                if f"layers.0.{place}_adapters." in n and "adapter_up" in n and n.endswith("weight"):
                    p.normal_(std=0.5)
            after = model(input_ids=ids).logits
            assert (after - before).abs().max() > 1e-3, place
            before = after


# ------------------------------------------------------------------------------------- the best state
@pytest.mark.parametrize("final_eval_limit", [3, 2], ids=["final-rows-differ", "final-rows-validated"])
def test_the_artifact_is_the_best_validated_state(tiny_model_dir, tmp_path, monkeypatch, final_eval_limit):
    """Validation scripted so that step 2 of 5 is the best: the saved adapter equals the weights at step 2
    (not the last step's), the manifest and the log name step 2, and metrics.json's history holds the
    scripted accuracies. The final evaluation scores the restored state; on the rows validation scored
    (final_eval_limit == eval_limit) it takes step 2's scores, which a fresh scoring of the kept model
    reproduces bit for bit, instead of scoring them again."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    scripted = {0: 0.25, 1: 0.4, 2: 0.9, 3: 0.5, 4: 0.6, 5: 0.7}
    states: list[dict[str, torch.Tensor]] = []  # the trainable state at each scoring, in order
    scorings: list[Any] = []
    finals: list[Any] = []
    real_score, real_evaluate = recipe._score, recipe._evaluate

    def recording_score(trainer, rows, setup):
        states.append({k: v.clone() for k, v in get_peft_model_state_dict(trainer.unwrapped).items()})
        scorings.append(real_score(trainer, rows, setup))
        return scorings[-1]

    def scripted_evaluate(scored, keep_answers=False):
        metrics = real_evaluate(scored, keep_answers)
        if keep_answers:  # the final evaluation
            finals.append(scored)
            return metrics
        return {**metrics, "accuracy": scripted[len(scorings) - 1]}

    monkeypatch.setattr(recipe, "_score", recording_score)
    monkeypatch.setattr(recipe, "_evaluate", scripted_evaluate)
    output = tmp_path / "run"
    config = build_config(
        {
            "method": "lora",
            "objective": "ranking",
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "validation": "arc_easy",
            "output": str(output),
            "max_steps": 5,
            "eval_steps": 1,
            "batch_size": 2,
            "train_limit": 8,
            "eval_limit": 2,
            "final_eval_limit": final_eval_limit,
            "lr": 1e-2,
            "method_options": {"r": 4},
        }
    )
    result = train(config, show_progress=False, keep_model=True)
    assert len(finals) == 1
    if final_eval_limit == 2:  # steps 0-5 validated, nothing scored again: step 2's own scores
        assert len(scorings) == 6 and finals[0] is scorings[2]
        setup = EvalSetup.of_run(config, get_method("lora"), torch.device("cpu"))
        rows = setup.rows(load_examples(bundled_path("arc_easy", "validation"), limit=2).examples)
        encoder = PromptEncoder(load_tokenizer(resolve_model(str(tiny_model_dir))))
        again = setup.score(result.model, encoder, rows, "cloze")
        np.testing.assert_array_equal(again.scores, finals[0].scores)
    else:  # the final rows scored for real, on the state that will be saved
        assert len(scorings) == 7 and finals[0] is scorings[6]
    saved = load_file(str(output / ADAPTER_DIR / "adapter_model.safetensors"))
    assert saved.keys() == states[2].keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, states[2][name]), name
        if final_eval_limit == 3:  # scored for real: on the restored step-2 state
            assert torch.equal(states[6][name], states[2][name]), name
    assert any(not torch.equal(states[5][n], states[2][n]) for n in saved)  # the last state differs
    assert json.loads((output / MANIFEST).read_text())["best_step"] == 2
    assert json.loads((output / METRICS).read_text())["train"]["best_step"] == 2
    metrics = json.loads((output / "metrics.json").read_text())
    validated = {h["step"]: h["val_accuracy"] for h in metrics["history"] if "val_accuracy" in h}
    assert validated == scripted
    assert max(validated.items(), key=lambda item: item[1])[0] == 2
    assert metrics["validation"]["n"] == final_eval_limit
    assert metrics == result.metrics
