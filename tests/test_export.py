"""`mcqtune export`: a run becomes a plain Hugging Face model directory that scores like the run.

Tiny random Llama (conftest.py); the real-model export is in tests/test_real_model.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from mcqtune.artifacts import EXPORT_MANIFEST
from mcqtune.cli.main import EXIT_USER_ERROR, main
from mcqtune.config import build_config
from mcqtune.data import bundled_path, load_examples
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.inference import Predictor
from mcqtune.prompt import PromptConfig, PromptEncoder
from mcqtune.training.recipe import train

CPU = torch.device("cpu")


def _train(tiny_model_dir: Path, output: Path, method: str, options: dict | None = None, **extra) -> Path:
    config = build_config(
        {
            "method": method,
            "objective": "ranking",
            "model": str(tiny_model_dir),
            "train": "arc_easy",
            "validation": "arc_easy",
            "output": str(output),
            "max_steps": 3,
            "batch_size": 2,
            "train_limit": 8,
            "eval_limit": 4,
            "final_eval_limit": 4,
            "lr": 1e-2,  # a large update: an export that lost it would show
            "method_options": options or {},
            **extra,
        }
    )
    train(config, show_progress=False)
    return output


@pytest.fixture(scope="module")
def arc_rows():
    return load_examples(bundled_path("arc_easy", "validation"), limit=6).examples


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    # a non-default prompt: the export must carry it, or eval --model DIR would score another prompt
    prompt = {"cloze_template": "Q: {question}\nA:"}
    lora = _train(tiny_model_dir, root / "lora", "lora", {"r": 4}, prompt=prompt)
    return {
        "lora": lora,
        "qlora": _train(tiny_model_dir, root / "qlora", "qlora", {"r": 4}),
        "subset": _train(tiny_model_dir, root / "subset", "subset", {"top_k": 1}),
        "prefix": _train(tiny_model_dir, root / "prefix", "prefix", {"num_virtual_tokens": 2}),
    }


def _scores(model, tokenizer, prompt: PromptConfig, rows) -> np.ndarray:
    encoder = PromptEncoder(tokenizer, prompt)
    return score_examples(model, encoder, rows, "cloze", precision="fp32", device=CPU).scores


@pytest.mark.parametrize(("method", "atol"), [("lora", 1e-4), ("subset", 1e-5), ("qlora", 5e-2)])
def test_exported_model_is_plain_and_scores_like_the_run(runs, method, atol, tmp_path, arc_rows, capsys):
    out = tmp_path / f"{method}-hf"
    assert main(["export", "--adapter", str(runs[method]), "--output", str(out)]) == 0
    assert "same predictions: yes" in capsys.readouterr().out
    for f in out.glob("*.safetensors"):  # only plain weights: no LoRA factors, no 4-bit storage
        with safe_open(str(f), framework="pt") as st:
            names = list(st.keys())
        assert names and not any("lora_" in n or "absmax" in n or "quant" in n for n in names)
    record = json.loads((out / EXPORT_MANIFEST).read_text())
    assert record["method"] == method and record["check"]["questions"] == 8
    if method == "lora":
        assert record["prompt"]["cloze_template"] == "Q: {question}\nA:"

    plain = AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)  # no peft, no bnb
    assert type(plain).__name__ == "LlamaForCausalLM"
    run = Predictor.open(None, {method: runs[method]}, device=CPU, precision="fp32")
    unmerged = _scores(run.module(method), run.tokenizer, run.prompt(method), arc_rows)
    exported = Predictor(str(out), device=CPU, precision="fp32")
    assert exported.prompt() == run.prompt(method)  # carried by mcqtune_export.json
    merged = _scores(plain, exported.tokenizer, exported.prompt(), arc_rows)
    np.testing.assert_allclose(merged, unmerged, atol=atol, rtol=0)


def test_exported_model_works_with_eval(runs, tmp_path, capsys):
    out = tmp_path / "lora-hf"
    assert main(["export", "--adapter", str(runs["lora"]), "--output", str(out), "--dtype", "bf16"]) == 0
    with safe_open(str(next(out.glob("*.safetensors"))), framework="pt") as st:
        assert st.get_tensor(next(iter(st.keys()))).dtype == torch.bfloat16
    metrics = tmp_path / "m.json"
    args = ["eval", "--model", str(out), "--data", "arc_easy", "--limit", "6", "--output", str(metrics)]
    assert main(args) == 0
    assert json.loads(metrics.read_text())["n"] == 6


def test_unmergeable_methods_and_bad_outputs_are_clear_errors(runs, tmp_path, capsys):
    out = tmp_path / "prefix-hf"
    assert main(["export", "--adapter", str(runs["prefix"]), "--output", str(out)]) == EXIT_USER_ERROR
    assert "prefix run cannot be merged" in capsys.readouterr().err
    assert not out.exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", "--adapter", str(runs["lora"]), "--output", str(taken)]) == EXIT_USER_ERROR
    assert "--overwrite" in capsys.readouterr().err
    assert (taken / "keep.txt").read_text() == "mine"

    # an export that does not reproduce the run is refused and nothing is written
    strict = tmp_path / "strict"
    args = ["export", "--adapter", str(runs["qlora"]), "--output", str(strict), "--tolerance", "1e-9"]
    assert main(args) == EXIT_USER_ERROR
    assert "not exporting" in capsys.readouterr().err
    assert not strict.exists()
