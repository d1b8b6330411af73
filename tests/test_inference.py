"""The inference layer on the tiny model: one base, many named artifacts, one chosen per call.

Artifacts are built directly (method.apply on the tiny base, trained tensors moved at random, saved the
way train saves them), so each has known in-memory scores to be reproduced after attaching.
"""

from __future__ import annotations

import gc
import shutil
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mcqtune import models
from mcqtune.artifacts import ADAPTER_DIR, base_identity, save_artifact
from mcqtune.config import method_defaults
from mcqtune.data import bundled_path, load_examples
from mcqtune.errors import ArtifactError
from mcqtune.evaluation.debias import LetterPrior
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.inference import Predictor, predictions
from mcqtune.methods import get_method
from mcqtune.models import load_model, resolve_model
from mcqtune.prompt import PromptConfig, PromptEncoder

CPU = torch.device("cpu")
# name -> (method, options): two artifacts of every method that shares the base
SHARED = {
    "lora-a": ("lora", {"r": 4}),
    "lora-b": ("lora", {"r": 2, "target_modules": "attention"}),
    "subset-a": ("subset", {"top_k": 1}),
    "subset-b": ("subset", {"top_k": 2}),
    "adapter-a": ("adapter", {"bottleneck": 8}),
    "adapter-b": ("adapter", {"config": "houlsby", "bottleneck": 4}),
    "prefix-a": ("prefix", {"num_virtual_tokens": 3, "init": "random"}),
    "prefix-b": ("prefix", {"num_virtual_tokens": 2, "init": "random"}),
    "ln_tuning-a": ("ln_tuning", {}),
    "ln_tuning-b": ("ln_tuning", {"target_modules": "norm"}),
    "prompt_tuning-a": ("prompt_tuning", {"num_virtual_tokens": 3, "init": "random"}),
    "prompt_tuning-b": ("prompt_tuning", {"num_virtual_tokens": 2}),
    "dora-a": ("dora", {"r": 2}),
    "houlsby-a": ("houlsby", {"bottleneck": 4}),
    # saved converted to plain LoRA (B A - B0 A0) of the unchanged base: must score as trained
    "pissa-a": ("pissa", {"r": 2}),
    "olora-a": ("olora", {"r": 2, "target_modules": "mlp"}),
}
OWN = {
    "full": ("full", {}),
    "qlora-a": ("qlora", {"r": 4, "compute_dtype": "fp32"}),
    "qlora-b": ("qlora", {"r": 2, "compute_dtype": "fp32"}),
}


@pytest.fixture(scope="module")
def rows():
    return load_examples(bundled_path("arc_easy", "validation"), limit=6).examples


def _scores(model, tokenizer, rows, packed: bool = True) -> np.ndarray:
    encoder = PromptEncoder(tokenizer, PromptConfig())
    return score_examples(model, encoder, rows, "cloze", packed=packed, precision="fp32", device=CPU).scores


def make_artifact(output: Path, model_dir: Path, method_name: str, options: dict, seed: int, rows):
    """Save an artifact whose trained tensors were moved at random; returns its in-memory scores."""
    method = get_method(method_name)
    options = method_defaults(method_name)["method_options"] | options  # as train resolves them
    resolved = resolve_model(str(model_dir))
    base = method.load_base(resolved, options, CPU)
    identity = base_identity(resolved, base)
    model = method.apply(base, options)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    model.eval()
    manifest = {
        "method": method_name,
        "method_options": options,
        "objective": "ranking",
        "scoring": "cloze",
        **identity,
        "prompt": PromptConfig().to_dict(),
        "packing": method.supports_packing,
    }
    save_artifact(model, output, manifest)
    tokenizer = models.load_tokenizer(resolved)
    return _scores(model, tokenizer, rows, packed=method.supports_packing)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_model_dir, rows):
    """{name: (run dir, in-memory scores)} for every artifact above."""
    root = tmp_path_factory.mktemp("artifacts")
    built = {}
    for seed, (name, (method, options)) in enumerate({**SHARED, **OWN}.items()):
        built[name] = (root / name, make_artifact(root / name, tiny_model_dir, method, options, seed, rows))
    return built


@pytest.fixture()
def count_loads(monkeypatch):
    """How many times a model's weights were read from disk."""
    calls = []
    original = models.AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", counting)
    return calls


def _storage(module: torch.nn.Module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


def test_many_artifacts_share_one_base_and_score_as_trained(artifacts, tiny_model_dir, rows, count_loads):
    predictor = Predictor(str(tiny_model_dir), device=CPU, precision="fp32")
    for name in SHARED:
        predictor.attach(name, artifacts[name][0])
    assert len(count_loads) == 1  # the base, once, for every artifact of every method
    base = predictor.base()
    plain = _scores(load_model(resolve_model(str(tiny_model_dir))), predictor.tokenizer, rows)
    # interleaved, so that every switch (including back to zero-shot) is exercised
    for name in [*SHARED, None, *reversed(SHARED), None]:
        got = predictor.score(rows, name).scored.scores
        expected = plain if name is None else artifacts[name][1]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=str(name))
        if name is not None and not name.startswith("subset"):
            assert _storage(base) <= _storage(predictor.module(name)), f"{name} copied base weights"


@pytest.mark.parametrize("name", [*SHARED, *OWN])
def test_an_artifact_scores_alike_alone_and_among_others(artifacts, tiny_model_dir, rows, name):
    alone = Predictor.open(str(tiny_model_dir), {name: artifacts[name][0]}, device=CPU, precision="fp32")
    alone_scores = alone.score(rows, name).scored.scores
    atol = 2e-2 if name.startswith("qlora") else 1e-5  # 4-bit matmuls round differently per batch shape
    np.testing.assert_allclose(alone_scores, artifacts[name][1], atol=atol, rtol=0)


def test_qlora_shares_one_4bit_base_and_full_gets_its_own(artifacts, tiny_model_dir, rows, count_loads):
    predictor = Predictor(str(tiny_model_dir), device=CPU, precision="fp32")
    for name in OWN:
        predictor.attach(name, artifacts[name][0])
    assert len(count_loads) == 2  # one 4-bit base for both QLoRA artifacts, one model for full
    predictor.attach("lora-a", artifacts["lora-a"][0])
    assert len(count_loads) == 3  # the plain base, once
    plain = _scores(load_model(resolve_model(str(tiny_model_dir))), predictor.tokenizer, rows)
    for name in ["qlora-a", "full", "qlora-b", None, "lora-a", "full"]:
        got = predictor.score(rows, name).scored.scores
        expected = plain if name is None else artifacts[name][1]
        atol = 2e-2 if name and name.startswith("qlora") else 1e-5
        np.testing.assert_allclose(got, expected, atol=atol, rtol=0, err_msg=str(name))
    assert _storage(predictor.module("full")).isdisjoint(_storage(predictor.base()))


def _live_tensors() -> list[torch.Tensor]:
    """Every tensor alive in this process (isinstance on some torch objects warns of deprecations)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


# one artifact of every method, detached while another of its method (and the rest) stay attached
DETACHED = ["lora-a", "subset-a", "adapter-a", "prefix-a", "qlora-a", "full"]


def test_detach_frees_an_artifact_and_the_others_answer_identically(artifacts, tiny_model_dir, rows):
    predictor = Predictor(str(tiny_model_dir), device=CPU, precision="fp32")
    keep = [n for n in [*SHARED, *OWN] if n not in DETACHED]
    for name in keep:
        predictor.attach(name, artifacts[name][0])
    before = {name: predictor.score(rows, name).scored.scores for name in [None, *keep]}
    for name in DETACHED:
        existing = _live_tensors()  # held, so that no new tensor can reuse an id
        known = {id(t) for t in existing}
        predictor.attach(name, artifacts[name][0])
        predictor.module(name)  # active: detach must first switch it off (subset: base tensors back)
        own = [weakref.ref(t) for t in _live_tensors() if id(t) not in known]
        assert own, name
        predictor.detach(name)
        del existing
        gc.collect()
        alive = [ref for ref in own if ref() is not None]
        assert not alive, f"{name}: {len(alive)} of its {len(own)} tensors are still held"
        with pytest.raises(ArtifactError, match=f"no artifact named '{name}'"):
            predictor.score(rows, name)
        for other, scores in before.items():
            np.testing.assert_array_equal(
                predictor.score(rows, other).scored.scores, scores, err_msg=str(other)
            )
    predictor.attach("lora-a", artifacts["lora-a"][0])  # the name is free again, and scores as trained
    np.testing.assert_allclose(
        predictor.score(rows, "lora-a").scored.scores, artifacts["lora-a"][1], atol=1e-5, rtol=0
    )


def test_lora_artifacts_share_a_forward_pass_with_their_own_answers(artifacts, tiny_model_dir, rows):
    names = ["lora-a", "lora-b", "qlora-a", "adapter-a"]
    predictor = Predictor.open(str(tiny_model_dir), {n: artifacts[n][0] for n in names}, precision="fp32")
    assert predictor.mix_key("lora-a") == predictor.mix_key("lora-b") is not None
    assert predictor.mix_key("qlora-a") not in (None, predictor.mix_key("lora-a"))  # another base
    assert predictor.mix_key("adapter-a") is None and predictor.mix_key(None) is None
    owners = ["lora-b", "lora-a"] * 3
    mixed = predictor.score_mixed(rows, owners).scores
    for row, owner in enumerate(owners):
        np.testing.assert_allclose(mixed[row], artifacts[owner][1][row], atol=1e-5, rtol=0)
    with pytest.raises(ArtifactError, match="cannot share a forward pass"):
        predictor.score_mixed(rows[:2], ["lora-a", "adapter-a"])


def test_bf16_base_is_stored_once_in_bf16_and_scores_alike(artifacts, tiny_model_dir, rows):
    shared = Predictor.open(str(tiny_model_dir), {n: artifacts[n][0] for n in SHARED}, precision="bf16")
    for name in ("lora-a", "subset-b", "adapter-a"):
        alone = Predictor.open(str(tiny_model_dir), {name: artifacts[name][0]}, precision="bf16")
        np.testing.assert_array_equal(
            shared.score(rows, name).scored.scores, alone.score(rows, name).scored.scores
        )
    linear = shared.base().model.layers[0].self_attn.q_proj.weight
    assert linear.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["lora-a", "adapter-b"])
def test_bf16_artifact_linear_weights_are_stored_in_bf16_with_the_same_scores(
    artifacts, tiny_model_dir, rows, name
):
    """Attached LoRA/adapter matrices are kept in bf16 under bf16 scoring (half their memory): the
    scores equal those of the artifact's fp32 weights under bf16 autocast bit for bit."""
    method_name, options = {**SHARED, **OWN}[name]
    options = method_defaults(method_name)["method_options"] | options
    method = get_method(method_name)
    base = load_model(resolve_model(str(tiny_model_dir)))
    fp32_weights = method.load(base, artifacts[name][0] / ADAPTER_DIR, options)
    assert {p.dtype for p in fp32_weights.parameters()} == {torch.float32}
    encoder = PromptEncoder(models.load_tokenizer(resolve_model(str(tiny_model_dir))), PromptConfig())
    expected = score_examples(fp32_weights, encoder, rows, "cloze", precision="bf16", device=CPU).scores

    predictor = Predictor.open(str(tiny_model_dir), {name: artifacts[name][0]}, precision="bf16")
    model = predictor.module(name)
    trained = [p for n, p in model.named_parameters() if name in n and p.dim() == 2]
    assert trained and {p.dtype for p in trained} == {torch.bfloat16}
    np.testing.assert_array_equal(predictor.score(rows, name).scored.scores, expected)


def test_an_artifact_for_another_base_is_refused(artifacts, tmp_path, tokenizer):
    from conftest import make_tiny_llama

    other = tmp_path / "other"
    make_tiny_llama(tokenizer, layers=2).save_pretrained(other, safe_serialization=True)
    tokenizer.save_pretrained(other)
    predictor = Predictor(str(other), device=CPU, precision="fp32")
    for name in ("lora-a", "subset-a", "full"):
        with pytest.raises(ArtifactError, match="config hash"):
            predictor.attach(name, artifacts[name][0])
    assert predictor.artifacts == {}


def test_a_tampered_lora_artifact_is_refused_and_the_others_stay(artifacts, tiny_model_dir, tmp_path, rows):
    tampered = tmp_path / "tampered"
    shutil.copytree(artifacts["lora-a"][0], tampered)
    weights = tampered / ADAPTER_DIR / "adapter_model.safetensors"
    state = load_file(str(weights))
    first = sorted(state)[0]
    state[first.replace("layers.0.", "layers.9.")] = state.pop(first)  # a layer the base lacks
    save_file(state, str(weights))

    predictor = Predictor.open(str(tiny_model_dir), {"good": artifacts["lora-b"][0]}, precision="fp32")
    with pytest.raises(ArtifactError, match="do not fit this base model"):
        predictor.attach("bad", tampered)
    assert list(predictor.artifacts) == ["good"]
    np.testing.assert_allclose(
        predictor.score(rows, "good").scored.scores, artifacts["lora-b"][1], atol=1e-5, rtol=0
    )
    with pytest.raises(ArtifactError, match="do not fit this base model"):  # alone as well
        Predictor.open(str(tiny_model_dir), {"bad": tampered}, precision="fp32")


def test_unknown_or_repeated_names_are_clear_errors(artifacts, tiny_model_dir, rows):
    predictor = Predictor.open(str(tiny_model_dir), {"a": artifacts["lora-a"][0]}, precision="fp32")
    with pytest.raises(ArtifactError, match=r"no artifact named 'b'.*attached: a"):
        predictor.score(rows, "b")
    with pytest.raises(ArtifactError, match="already attached"):
        predictor.attach("a", artifacts["lora-b"][0])


def test_a_saved_letter_prior_is_applied(artifacts, tiny_model_dir, rows):
    predictor = Predictor.open(str(tiny_model_dir), {"a": artifacts["lora-a"][0]}, precision="fp32")
    n = len(rows[0].choices)
    prior = LetterPrior({n: [0.7] + [0.3 / (n - 1)] * (n - 1)}, "cloze", {n: 10})
    records = predictions(predictor.score(rows, "a", prior=prior))
    plain = predictions(predictor.score(rows, "a"))
    assert all(r.debiased for r in records) and not any(r.debiased for r in plain)
    assert [r.raw_index for r in records] == [r.index for r in plain]
    for record, before in zip(records, plain, strict=True):
        assert record.example is before.example
        assert sum(record.probabilities) == pytest.approx(1.0)
        assert record.probabilities[0] < before.probabilities[0]


@pytest.mark.slow
def test_real_model_eval_through_the_predictor_equals_the_direct_load(tmp_path):
    """The bundled model: `mcqtune eval --adapter` (Predictor) gives train's own final accuracy and the
    scores of the plain load the CLI used before (fresh base, ``Method.load``, no sharing)."""
    import json

    from mcqtune.cli.main import main
    from mcqtune.config import build_config
    from mcqtune.evaluation.metrics import compute_metrics
    from mcqtune.methods.base import store_linear_weights
    from mcqtune.models import resolve_precision
    from mcqtune.training.recipe import train

    output, rows_n = tmp_path / "lora", 16
    flags = {"method": "lora", "train": "arc_easy", "validation": "arc_easy", "output": str(output)}
    flags |= {"max_steps": 2, "eval_steps": 2, "train_limit": 8, "eval_limit": 2, "final_eval_limit": rows_n}
    train(build_config(flags), show_progress=False)
    metrics_file = tmp_path / "eval.json"
    argv = ["eval", "--adapter", str(output), "--data", "arc_easy", "--limit", str(rows_n)]
    assert main([*argv, "--output", str(metrics_file)]) == 0
    evaluated = json.loads(metrics_file.read_text())
    trained = json.loads((output / "metrics.json").read_text())["validation"]
    assert evaluated["n"] == trained["n"] == rows_n
    assert evaluated["accuracy"] == trained["accuracy"]

    precision = resolve_precision("auto", CPU)
    manifest = json.loads((output / "mcqtune.json").read_text())
    base = load_model(resolve_model(manifest["base_model"]))
    store_linear_weights(base, torch.bfloat16 if precision == "bf16" else torch.float32)
    direct = get_method("lora").load(base, output / ADAPTER_DIR, manifest["method_options"])
    rows = load_examples(bundled_path("arc_easy", "validation"), limit=rows_n).examples
    encoder = PromptEncoder(
        models.load_tokenizer(resolve_model(None)), PromptConfig.from_dict(manifest["prompt"])
    )
    old = score_examples(direct, encoder, rows, manifest["scoring"], precision=precision, device=CPU)
    predictor = Predictor.open(None, {"lora": output}, device=CPU)
    new = predictor.score(rows, "lora").scored
    np.testing.assert_array_equal(new.scores, old.scores)
    assert compute_metrics(old)["accuracy"] == evaluated["accuracy"]
