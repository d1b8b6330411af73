"""Shared fixtures: the real tokenizer, a tiny random Llama saved as a model dir, small data files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in every process a test starts),
    # or the OpenMP threads of the two spin against each other (docs/PERFORMANCE.md, threads).
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = "1"

import torch  # after the thread count

# Method options that fit the tiny model below (4 layers, hidden 64) or keep it fast; a registered method
# not named here runs with its YAML defaults.
TINY_OPTIONS: dict[str, dict] = {
    "subset": {"top_k": 2},
    "prefix": {"num_virtual_tokens": 4},
    "lora": {"r": 4},
    "qlora": {"r": 4},
}


@pytest.fixture(scope="session")
def bundled_resolved():
    """The bundled SmolLM2 (dequantized once into the user cache; seconds afterwards)."""
    from mcqtune.models import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def tokenizer(bundled_resolved):
    from mcqtune.models import load_tokenizer

    return load_tokenizer(bundled_resolved)


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 4):
    model = make_tiny_causal_lm(
        "Llama",
        tokenizer,
        layers,
        seed,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.config.use_cache = False
    return model


def make_tiny_causal_lm(architecture: str, tokenizer, layers: int = 2, seed: int = 0, **config: Any):
    """A tiny random ``<architecture>ForCausalLM`` (Qwen2, Gemma, Mistral...) with the real tokenizer: the
    other architectures a feature must work on besides the suite's Llama."""
    import transformers

    torch.manual_seed(seed)
    settings = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128}
    settings |= {"num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2}
    settings |= {"head_dim": 16, "max_position_embeddings": 512, "pad_token_id": tokenizer.pad_token_id}
    config_class = getattr(transformers, f"{architecture}Config")
    model_class = getattr(transformers, f"{architecture}ForCausalLM")
    return model_class(config_class(**(settings | config))).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with the real tokenizer, saved like any local HF model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(tokenizer).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_model(tokenizer):
    return make_tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def arc_examples():
    from mcqtune.data import bundled_path, load_examples

    return load_examples(bundled_path("arc_easy", "validation")).examples


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail the test (instead of hanging CI) if the block runs longer than ``seconds``: a hang guard,
    not a speed bound."""

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
