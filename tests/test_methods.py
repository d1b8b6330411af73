"""Every fine-tuning method on a tiny random Llama, through the real training loop, plus one short
real-model run each (marked slow).

For each method and objective: exactly the method's parameters train (names and counts), a few optimizer
steps change them and leave every frozen tensor bit-identical, the saved artifact reloads into a model
that scores identically, packed cloze scoring equals one-row-per-option scoring where the method allows
packing, and an artifact refuses a base with another architecture.

Uses the shared ``tokenizer`` and ``tiny_model_dir`` fixtures from conftest.py (4 layers, hidden 64,
4 heads, 2 KV heads, tied embeddings, the real 49,152-token tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_OPTIONS
from mcqtune.artifacts import ADAPTER_DIR, ArtifactError
from mcqtune.config import TrainConfig, build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.metrics import compute_metrics
from mcqtune.inference import Predictor
from mcqtune.methods import METHODS, get_method, parameter_report
from mcqtune.methods.base import tensor_digest
from mcqtune.methods.ia3 import module_names
from mcqtune.methods.lora import MUTATING_INITS
from mcqtune.models import load_model, load_tokenizer, resolve_model, resolve_precision
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import cloze_forward, collate_cloze
from mcqtune.training.recipe import train

CPU = torch.device("cpu")
# The matrix trains under bf16 autocast whatever the host: asked for, not "auto" (which is fp32 on a CPU
# without native bf16, where torch emulates it), so the bf16 paths are tested everywhere.
TRAIN_PRECISION = "bf16"

# (case id, method, options, objectives): every registered method with both objectives (found through the
# registry, so a new method is tested here without being listed), then variants of its options, which
# run the ranking objective only to keep this file fast.
# A named preset (DoRA of LoRA...) runs the ranking objective only: its method runs both.
BOTH_OBJECTIVES = ("letter", "ranking")
CASES = [
    (name, name, TINY_OPTIONS.get(name, {}), ("ranking",) if METHODS[name].preset_of else BOTH_OBJECTIVES)
    for name in sorted(METHODS)
] + [
    (
        "subset-head",
        "subset",
        {"top_k": 1, "train_head": True, "extra_trainable": ["layers.0.input_layernorm"]},
        ("ranking",),
    ),
    ("houlsby-swish", "houlsby", {"bottleneck": 32, "non_linearity": "swish"}, ("ranking",)),
    (
        "prefix-mlp",
        "prefix",
        {"num_virtual_tokens": 4, "prefix_projection": True, "encoder_hidden_size": 32},
        ("ranking",),
    ),
    (
        "qlora-fp32",
        "qlora",
        {"r": 4, "quant_type": "fp4", "double_quant": False, "compute_dtype": "fp32"},
        ("ranking",),
    ),
    ("ia3-attention", "ia3", {"target_modules": "q_proj, v_proj", "feedforward_modules": []}, ("ranking",)),
    ("prompt_tuning-random", "prompt_tuning", {"num_virtual_tokens": 3, "init": "random"}, ("ranking",)),
    ("olora-rslora", "olora", {"r": 4, "use_rslora": True}, ("ranking",)),
]
RUNS = [
    pytest.param((method, options, objective), id=f"{case}-{objective}")
    for case, method, options, objectives in CASES
    for objective in objectives
]


def expected_trainable(name: str, options: dict[str, Any], cfg) -> tuple[int, Any]:
    """(trainable parameter count, predicate on trainable names) worked out from the tiny config."""
    method = get_method(name).preset_of or name  # a preset trains what its method trains, by its options
    h, inter, n_layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h  # attention + MLP + two norms
    if method == "full":
        return vocab * h + n_layers * layer + h, lambda n: True
    if method == "subset":
        k = options["top_k"]
        top = tuple(f"model.layers.{i}." for i in range(n_layers - k, n_layers))
        extra = tuple(options.get("extra_trainable", ()))
        head = vocab * h if options.get("train_head") else 0
        extra_count = h * len(extra)  # the test only lists norm weights as extras
        return (
            k * layer + h + head + extra_count,
            lambda n: (
                n.startswith((*top, "model.norm."))
                or any(e in n for e in extra)
                or (head > 0 and n == "model.embed_tokens.weight")
            ),
        )
    if method == "adapter":
        b = options.get("bottleneck", 16)
        per_adapter = h * b + b + b * h + h
        n_adapters = 2 if options.get("config") == "houlsby" else 1
        return n_layers * n_adapters * per_adapter, lambda n: ".adapters.mcqtune." in n
    if method == "prefix":
        t = options["num_virtual_tokens"]
        out = n_layers * 2 * kv
        if options.get("prefix_projection"):
            e = options["encoder_hidden_size"]
            return t * kv + kv * e + e + e * out + out, lambda n: "prompt_encoder" in n
        return t * out, lambda n: "prompt_encoder" in n
    if method in ("lora", "qlora"):
        shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
        magnitudes = sum(o for _, o in shapes) if options["use_dora"] else 0  # DoRA: one per output
        return n_layers * (options["r"] * sum(i + o for i, o in shapes) + magnitudes), lambda n: "lora_" in n
    if method == "ln_tuning":
        targets = module_names(options["target_modules"])
        per_layer = sum(t.endswith("layernorm") for t in targets)  # input_ and post_attention_layernorm
        final = h if "norm" in targets else 0
        return n_layers * per_layer * h + final, lambda n: ".ln_tuning_layers." in n
    if method == "prompt_tuning":
        return options["num_virtual_tokens"] * h, lambda n: "prompt_encoder" in n
    if method == "ia3":  # one scale per output channel, per input channel for feed-forward targets
        widths = {  # (in, out) of each Llama linear
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, inter),
            "up_proj": (h, inter),
            "down_proj": (inter, h),
        }
        targets = options["target_modules"]
        targets = targets.split(",") if isinstance(targets, str) else targets
        scaled = [widths[t.strip()][0 if t.strip() in options["feedforward_modules"] else 1] for t in targets]
        return n_layers * sum(scaled), lambda n: ".ia3_l." in n
    raise AssertionError(method)


@pytest.fixture(scope="module")
def arc_rows():
    return load_examples(bundled_path("arc_easy", "validation"), limit=6).examples


@pytest.fixture(scope="module")
def other_base_dir(tmp_path_factory, tokenizer) -> Path:
    """Same family and width as the tiny model but 3 layers: a different base for every method."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("other-llama")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


class Recorded:
    """What the method's apply() produced: parameter names, digests and the parameter report."""

    def __init__(self, model: torch.nn.Module):
        params = list(model.named_parameters())
        self.digests = {n: tensor_digest({n: p}) for n, p in params}
        self.trainable = {n for n, p in params if p.requires_grad}
        self.report = parameter_report(model)


@pytest.fixture(scope="module", params=RUNS)
def run(request, tmp_path_factory, tiny_model_dir):
    """Train one (method, options, objective) for 3 steps; record the model right after apply()."""
    method_name, options, objective = request.param
    method = get_method(method_name)
    output = tmp_path_factory.mktemp(f"{method_name}-{objective}")
    config = build_config(
        {
            "method": method_name,
            "objective": objective,
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "validation": "arc_easy",
            "output": str(output),
            "max_steps": 3,
            "eval_steps": 3,
            "batch_size": 2,
            "train_limit": 8,
            "eval_limit": 4,
            "final_eval_limit": 4,
            "precision": TRAIN_PRECISION,
            "method_options": options,
        }
    )
    recorded: list[Recorded] = []
    original_apply = method.apply

    def recording_apply(model, opts):
        applied = original_apply(model, opts)
        recorded.append(Recorded(applied))
        return applied

    method.apply = recording_apply  # instance attribute: shadows the class's apply for this run only
    try:
        result = train(config, show_progress=False, keep_model=True)
    finally:
        del method.apply
    return {
        "method": method,
        "options": config.method_options,
        "objective": objective,
        "output": output,
        "result": result,
        "applied": recorded[0],
    }


@dataclass
class Reloaded:
    """A run's artifact loaded back through ``Predictor`` (fp32 unless asked; ``mcqtune eval`` resolves
    ``auto``), without the training autocast wrapper."""

    model: torch.nn.Module
    manifest: dict[str, Any]
    tokenizer: Any
    prompt: Any


def reload_run(run_dir: Path, precision: str = "fp32") -> Reloaded:
    predictor = Predictor.open(None, {"run": run_dir}, device=CPU, precision=precision)
    manifest = predictor.artifacts["run"].manifest
    return Reloaded(predictor.module("run"), manifest, predictor.tokenizer, predictor.prompt("run"))


@pytest.fixture(scope="module")
def reloaded(run):
    return reload_run(run["output"])


def test_only_the_method_parameters_train(run):
    applied: Recorded = run["applied"]
    count, is_trainable = expected_trainable(run["method"].name, run["options"], run["result"].model.config)
    assert applied.report.trainable == count
    assert applied.trainable, "no trainable parameters"
    assert all(is_trainable(n) for n in applied.trainable), sorted(applied.trainable)
    frozen = set(applied.digests) - applied.trainable
    assert not any(is_trainable(n) for n in frozen)
    saved = json.loads((run["output"] / "metrics.json").read_text())
    assert saved["parameters"]["trainable"] == count
    if run["method"].name == "qlora":
        assert_4bit_base(run["result"].model, applied.report)


def test_training_changes_trained_weights_only(run):
    applied: Recorded = run["applied"]
    after = {n: tensor_digest({n: p}) for n, p in run["result"].model.named_parameters()}
    assert set(after) == set(applied.digests)
    changed = {n for n in after if after[n] != applied.digests[n]}
    assert changed == applied.trainable
    losses = [h["loss"] for h in run["result"].history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_reloaded_artifact_scores_identically(run, reloaded, arc_rows):
    loaded = reloaded
    assert loaded.manifest["method"] == run["method"].name
    assert loaded.manifest["packing"] == run["method"].supports_packing
    encoder = PromptEncoder(loaded.tokenizer, loaded.prompt)
    # Training's precision: accelerate leaves its bf16 autocast on the returned model's forward.
    precision = TRAIN_PRECISION
    for scoring in ("letter", "cloze"):
        kwargs = {"packed": loaded.manifest["packing"], "precision": precision, "device": CPU}
        before = score_examples(run["result"].model, encoder, arc_rows, scoring, **kwargs)
        again = score_examples(loaded.model, encoder, arc_rows, scoring, **kwargs)
        # prefix_projection: in memory the MLP runs under autocast; the artifact holds its fp32 output.
        # DoRA's weight norm reads the stored weight outside autocast: bf16 in training, fp32 here.
        # PiSSA/OLoRA: in memory bf16(W - B0 A0) + B A, reloaded bf16(W) + (B A - B0 A0), whose two
        # large terms cancel in bf16 (in fp32 they agree to 1e-5: tests/test_inference.py).
        options = run["options"]
        atol = 1e-5
        if options.get("prefix_projection") or options.get("use_dora"):
            atol = 5e-3
        if options.get("init") in MUTATING_INITS:
            atol = 2e-2
        np.testing.assert_allclose(before.scores, again.scores, atol=atol, rtol=0)
        # Same answers, except that a near-tie (two options within the tolerance) may go either way.
        flipped = np.flatnonzero(before.predictions != again.predictions)
        chosen, other = before.predictions[flipped], again.predictions[flipped]
        gap = before.scores[flipped, chosen] - before.scores[flipped, other]
        assert (gap <= 2 * atol).all(), (flipped, gap)


def test_reloaded_artifact_under_bf16_scores_exactly_as_trained(run, arc_rows):
    """`mcqtune eval`'s own load at bf16 gives the bf16-trained model's scores bit for bit:
    the base and the artifact's layers stored as training stored or autocast rounded them (DoRA keeps its
    fp32 LoRA weights: peft takes its weight norm in lora_A's dtype)."""
    options = run["options"]
    if options.get("prefix_projection") or options.get("init") in MUTATING_INITS:
        pytest.skip("stored in another form than trained (see the fp32 test above)")
    loaded = reload_run(run["output"], precision=TRAIN_PRECISION)
    encoder = PromptEncoder(loaded.tokenizer, loaded.prompt)
    kwargs = {"packed": loaded.manifest["packing"], "precision": TRAIN_PRECISION, "device": CPU}
    for scoring in ("letter", "cloze"):
        before = score_examples(run["result"].model, encoder, arc_rows, scoring, **kwargs)
        again = score_examples(loaded.model, encoder, arc_rows, scoring, **kwargs)
        np.testing.assert_array_equal(before.scores, again.scores)


def test_packed_cloze_matches_one_row_per_option(run, reloaded, arc_rows, tokenizer):
    # The reloaded model (fp32, no autocast) isolates the mask/position handling from bf16 rounding.
    model = reloaded.model
    features = PromptEncoder(tokenizer).encode_cloze(arc_rows).features
    ids = collate_cloze(features, tokenizer.pad_token_id, packed=False)
    with torch.no_grad():
        logits = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, logits_to_keep=2).logits
        assert logits.shape[1] == 2  # logits_to_keep reaches the LM head
        copies = cloze_forward(model, ids)
        if not run["method"].supports_packing:
            pytest.skip(f"{run['method'].name} does not support packing (logits_to_keep was checked)")
        packed = cloze_forward(model, collate_cloze(features, tokenizer.pad_token_id, packed=True))
    # QLoRA's 4-bit matmuls run in its bf16 compute dtype, whose rounding depends on the batch shape.
    atol = 3e-2 if run["method"].name == "qlora" else 1e-4
    torch.testing.assert_close(packed, copies, atol=atol, rtol=0)


def test_artifact_refuses_another_base(run, other_base_dir):
    with pytest.raises(ArtifactError, match="config hash"):
        Predictor.open(str(other_base_dir), {"run": run["output"]}, device=CPU, precision="fp32")
    # Below the manifest's hash check, the method's own loader refuses it too (LoRA included).
    method = run["method"]
    other = method.load_base(resolve_model(str(other_base_dir)), run["options"], CPU)
    with pytest.raises((ValueError, RuntimeError, KeyError, OSError)):
        method.load(other, run["output"] / ADAPTER_DIR, run["options"])


def test_artifact_holds_only_what_was_trained(run):
    artifact = run["output"] / ADAPTER_DIR
    size = sum(f.stat().st_size for f in artifact.iterdir())
    # PiSSA/OLoRA are saved as the plain LoRA B A - B0 A0 of rank 2r: twice the trained tensors
    converted = 2 if run["options"].get("init") in MUTATING_INITS else 1
    assert size <= 4 * converted * run["applied"].report.trainable + 64 * 1024  # fp32 + small configs
    if converted == 2:  # a plain LoRA that attaches to the unchanged base
        saved = json.loads((artifact / "adapter_config.json").read_text())
        assert saved["r"] == 2 * run["options"]["r"] and saved["init_lora_weights"] is True
    assert all(f.suffix in (".safetensors", ".json", ".md") for f in artifact.iterdir())
    if run["method"].name == "subset":  # exactly the trained tensors (top-K layers, see above), by name
        from safetensors import safe_open

        with safe_open(str(artifact / "subset.safetensors"), framework="pt") as f:
            names = set(f.keys())
            layers = f.metadata()["layers"]
        assert names == run["applied"].trainable
        trained_layers = sorted({int(n.split(".")[2]) for n in names if n.startswith("model.layers.")})
        assert layers == ",".join(str(i) for i in trained_layers)


def assert_4bit_base(model: torch.nn.Module, report) -> None:
    """Every decoder linear is a frozen bitsandbytes 4-bit layer: half a byte per weight."""
    import bitsandbytes as bnb

    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * model.config.num_hidden_layers
    for module in quantized:
        weight = module.weight
        assert weight.dtype == torch.uint8 and not weight.requires_grad
        # 1/8 of the fp32 bytes (the per-block scales live in quant_state, outside the parameters)
        assert weight.numel() * weight.element_size() * 8 == module.in_features * module.out_features * 4
    assert report.frozen_base_bytes < 4 * (report.total - report.trainable)


@pytest.mark.parametrize("case", ["lora", "qlora", "qlora-fp32", "ia3", "ln_tuning", "dora", "olora-rslora"])
def test_merge_matches_the_unmerged_model(case, tiny_model_dir, tmp_path, arc_rows):
    method_name, options = next((m, o) for c, m, o, _ in CASES if c == case)
    config = build_config(
        {
            "method": method_name,
            "objective": "ranking",
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "output": str(tmp_path / case),
            "max_steps": 3,
            "batch_size": 2,
            "train_limit": 8,
            # a large update, so that a lost or doubled merge would show (IA3's and the norms' scales
            # start at one)
            "lr": 0.5 if method_name in ("ia3", "ln_tuning") else 1e-2,
            "method_options": options,
        }
    )
    config.validation = None  # (a None flag means "not given" to build_config)
    train(config, show_progress=False)
    loaded = reload_run(tmp_path / case)
    encoder = PromptEncoder(loaded.tokenizer, loaded.prompt)
    kwargs = {"precision": "fp32", "device": CPU}
    unmerged = score_examples(loaded.model, encoder, arc_rows, "cloze", **kwargs).scores
    merged_model = get_method(method_name).merge(loaded.model)
    base = load_model(resolve_model(str(tiny_model_dir)))
    assert type(merged_model).__name__ == "LlamaForCausalLM"
    assert dict(merged_model.named_parameters()).keys() == dict(base.named_parameters()).keys()
    assert all(p.dtype == torch.float32 for p in merged_model.parameters())
    merged = score_examples(merged_model, encoder, arc_rows, "cloze", **kwargs).scores
    # qlora with bf16 compute: the unmerged model rounds its matmul inputs and dequantized weights to bf16
    atol = 5e-2 if case == "qlora" else 1e-4
    np.testing.assert_allclose(merged, unmerged, atol=atol, rtol=0)
    plain = score_examples(base, encoder, arc_rows, "cloze", **kwargs).scores
    assert np.abs(merged - plain).max() > 0.2  # the update is really in the merged weights


# prompt tuning: peft tokenizes init_text with the tokenizer's special tokens (a BOS comes first)
@pytest.mark.parametrize(("method_name", "special_tokens"), [("prefix", False), ("prompt_tuning", True)])
def test_text_init_equals_prepending_the_text(method_name, special_tokens, tiny_model_dir, tokenizer):
    """init: text makes the untrained prefix (soft prompt) behave exactly like the text written before
    the input."""
    from mcqtune.config import method_option_defaults

    method = get_method(method_name)
    base = load_model(resolve_model(str(tiny_model_dir)))
    options = {**method_option_defaults(method_name), "num_virtual_tokens": 5}
    model = method.apply(base, options)
    text_ids = tokenizer(options["init_text"], add_special_tokens=special_tokens)["input_ids"][:5]
    ids = torch.tensor(
        [tokenizer("Question: what is 2 + 2?\nAnswer: 4", add_special_tokens=False)["input_ids"]]
    )
    with torch.no_grad():
        with_prefix = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        with model.disable_adapter():
            written = model(input_ids=torch.cat([torch.tensor([text_ids]), ids], dim=1)).logits
    # a soft prompt also returns logits at its own 5 positions: compare the input's
    torch.testing.assert_close(with_prefix[:, -ids.shape[1] :], written[:, 5:], atol=1e-4, rtol=0)


# ------------------------------------------------------------------ the bundled model, one short run each
REAL_ARTIFACT_MIB = {  # (min, max) artifact size on SmolLM2-135M with the YAML defaults
    "full": (500, 560),  # every weight, fp32 (the tied head is stored once)
    "subset": (130, 145),  # 10 layers of ~3.5M params + the final norm, fp32
    "adapter": (1.5, 3),  # 570,720 params
    "prefix": (0.8, 1.2),  # 20 tokens x 30 layers x 2 x 192
    "qlora": (15, 20),  # LoRA r=16 on all linears, fp32
    "ia3": (0.2, 0.3),  # 30 layers x (192 + 192 + 1536) scales, fp32
    "ln_tuning": (0.1, 0.2),  # (30 x 2 + 1) x 576 norm scales
    "prompt_tuning": (0.03, 0.08),  # 20 x 576 input embeddings
    "dora": (18, 21),  # LoRA's + one magnitude per output channel
}


# Every method on the real model; of the presets (LoRA's and the adapter's options, each one's defining
# property checked on the tiny model: test_method_learning.py) only DoRA, whose weight norm met the real
# model's precision (below). One objective per method (both objectives run the same per-method code; each
# is covered by several methods), so the matrix costs one short real-model run per method: CI time
# (issues 11, 28). Methods that
# cannot pack a question's options into one row (prefix, prompt tuning: their virtual tokens) score
# ranking one option per row, 4x the forward passes: on the real model they take the letter objective
# (their ranking path runs on the tiny model: test_only_the_method_parameters_train and others).
RANKING, LETTER = ("ranking", "arc_easy"), ("letter", "medmcqa")
# save_steps: none (build_config reads a flag of None as not given, so it goes in the base)
NO_CHECKPOINTS = TrainConfig(save_steps=None)
REAL_MODEL_OBJECTIVE = {"prefix": LETTER, "prompt_tuning": LETTER, "ln_tuning": RANKING, "qlora": LETTER}
REAL_MODEL_RUNS = [
    (name, *REAL_MODEL_OBJECTIVE.get(name, (RANKING, LETTER)[i % 2]))
    for i, name in enumerate(sorted(REAL_ARTIFACT_MIB))
]


@pytest.mark.slow
@pytest.mark.parametrize(("method_name", "objective", "data"), REAL_MODEL_RUNS)
def test_real_model_trains_saves_reloads_and_evaluates(method_name, objective, data, tmp_path):
    output = tmp_path / method_name
    scoring = "cloze" if objective == "ranking" else "letter"
    config = build_config(
        {
            "method": method_name,
            "objective": objective,
            "train": data,
            "validation": data,
            "output": str(output),
            "max_steps": 2,
            "eval_steps": 2,
            "batch_size": 4,
            "train_limit": 8,
            "eval_limit": 2,  # the last step is always validated: the smallest set (CI time, issue 28)
            "final_eval_limit": 4,
        },
        base=NO_CHECKPOINTS,  # no end-of-run checkpoint (full's is 1.6 GB with Adam's moments)
    )
    result = train(config, show_progress=False, keep_model=True)
    metrics = json.loads((output / "metrics.json").read_text())
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert metrics["validation"]["n"] == 4
    low, high = REAL_ARTIFACT_MIB[method_name]
    assert low <= metrics["artifact_bytes"] / 2**20 <= high
    report = metrics["parameters"]
    if method_name == "qlora":
        # 4-bit linears + the fp32 (tied) embedding: about 0.3 of the fp32 model's bytes
        assert 0.25 <= report["frozen_base_bytes"] / (4 * (report["total"] - report["trainable"])) <= 0.35

    # Reloaded as `mcqtune eval` does (precision auto: bf16 here, the base's linear weights stored in bf16
    # like the trained model's): DoRA's weight norm is taken from the stored weights, so an fp32 reload
    # differs from the trained model by up to 0.2 log-prob and can flip a close answer.
    loaded = reload_run(output, precision="auto")
    assert loaded.manifest["scoring"] == scoring == metrics["validation"]["scoring"]
    rows = load_examples(bundled_path(data, "validation"), limit=4).examples
    encoder = PromptEncoder(loaded.tokenizer, loaded.prompt)
    kwargs = {
        "packed": loaded.manifest["packing"],
        "precision": resolve_precision("auto", CPU),
        "device": CPU,
    }
    again = score_examples(loaded.model, encoder, rows, scoring, **kwargs)
    before = score_examples(result.model, encoder, rows, scoring, **kwargs)
    np.testing.assert_array_equal(before.predictions, again.predictions)
    assert compute_metrics(again)["accuracy"] == metrics["validation"]["accuracy"]


def _checkpointing_trainer(method_name: str, tiny_model_dir: Path, rows, checkpointing: bool):
    from mcqtune.training.trainer import Trainer

    config = build_config(
        {
            "method": method_name,
            "objective": "ranking",
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "max_steps": 2,
            "batch_size": 2,
            "precision": "fp32",
            "method_options": TINY_OPTIONS.get(method_name, {}),
            "gradient_checkpointing": checkpointing,
        }
    )
    resolved = resolve_model(str(tiny_model_dir))
    torch.manual_seed(0)
    return Trainer(config, resolved, PromptEncoder(load_tokenizer(resolved)), rows)


@pytest.mark.parametrize("method_name", [n for n in sorted(METHODS) if not METHODS[n].preset_of])
def test_gradient_checkpointing_trains_the_same(method_name, tiny_model_dir, arc_rows):
    """--gradient-checkpointing recomputes activations instead of keeping them: the same losses and the
    same trained weights (fp32: the recomputation replays the same kernels), for every method that
    supports it; the others refuse it by name."""
    from mcqtune.config import ConfigError

    if not METHODS[method_name].supports_gradient_checkpointing:
        with pytest.raises(ConfigError, match=f"method '{method_name}' does not support it"):
            _checkpointing_trainer(method_name, tiny_model_dir, arc_rows, True)
        return
    plain = _checkpointing_trainer(method_name, tiny_model_dir, arc_rows, False)
    plain_losses = [plain.step().loss for _ in range(2)]
    checkpointed = _checkpointing_trainer(method_name, tiny_model_dir, arc_rows, True)
    checkpointed_losses = [checkpointed.step().loss for _ in range(2)]
    assert checkpointed.unwrapped.is_gradient_checkpointing and not plain.unwrapped.is_gradient_checkpointing
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-5)
    for name, param in plain.named_trainable.items():
        torch.testing.assert_close(checkpointed.named_trainable[name], param, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("method_name", "options", "message"),
    [
        ("pissa", {"use_dora": True}, "init 'pissa' cannot be combined with use_dora"),
        ("lora", {"init": "svd"}, "init must be one of kaiming, gaussian, pissa, olora"),
        ("loraplus", {"loraplus_lr_ratio": 0}, "loraplus_lr_ratio must be positive"),
        ("prompt_tuning", {"init": "vocab"}, "init must be one of text, random"),
        ("ln_tuning", {"target_modules": []}, "target_modules is empty"),
    ],
)
def test_bad_variant_options_are_config_errors(method_name, options, message, tiny_model_dir, tmp_path):
    from mcqtune.errors import ConfigError

    config = build_config(
        {
            "method": method_name,
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "output": str(tmp_path / "run"),
            "max_steps": 1,
            "train_limit": 2,
            "method_options": options,
        }
    )
    with pytest.raises(ConfigError, match=message):
        train(config, show_progress=False)
    assert not (tmp_path / "run" / ADAPTER_DIR).exists()  # nothing half-written


def test_loraplus_trains_b_at_the_ratio_of_a(tiny_model_dir):
    """LoRA+ (the loraplus preset): B's parameter group runs at 16x the configured learning rate."""
    from mcqtune.config import method_option_defaults

    method = get_method("loraplus")
    options = method_option_defaults("loraplus")
    model = method.apply(load_model(resolve_model(str(tiny_model_dir))), options)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    config = build_config({"method": "loraplus", "output": "unused", "lr": 1e-3})
    optimizer = method.make_optimizer(list(named.values()), config, CPU)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {lr_of[id(p)] for n, p in named.items() if ".lora_A." in n} == {1e-3}
    assert options["loraplus_lr_ratio"] == 16.0
    assert {lr_of[id(p)] for n, p in named.items() if ".lora_B." in n} == {1e-3 * 16.0}


def test_adapter_activation_logs_no_spurious_warning(tiny_model_dir, tmp_path, caplog):
    """AdapterHub warns "none are activated for the forward pass" while it switches adapters, although
    no forward pass runs: training and reloading an adapter must not show users that warning."""
    from mcqtune.config import method_option_defaults

    method, options = get_method("adapter"), method_option_defaults("adapter")
    with caplog.at_level("WARNING"):
        model = method.apply(load_model(resolve_model(str(tiny_model_dir))), options)
        method.save(model, tmp_path)
        base = load_model(resolve_model(str(tiny_model_dir)))
        method.activate(method.attach(base, tmp_path, options, "reloaded"), "reloaded")
    assert any(".adapters.reloaded." in name for name, _ in base.named_parameters())
    assert not [r for r in caplog.records if "none are activated" in r.getMessage()]
