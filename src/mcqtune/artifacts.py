"""Trained artifacts: what a run directory holds and how it is loaded back with no other flags.

Layout of a run directory::

    adapter/        only what was trained, safetensors (a standard peft adapter for LoRA/QLoRA)
    mcqtune.json    manifest: method, options, objective/scoring, prompt, base model id + config hash
    config.yaml     the fully resolved training config
    metrics.json    validation metrics and training history (written last: it marks the run finished)
    checkpoints/    while training: the newest checkpoints, to resume from (removed when finished)
    .mcqtune.lock   held by the process training into the directory

Every module reads these names from the constants below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mcqtune import __version__
from mcqtune.atomic import atomic_directory, atomic_write_json, directory_bytes
from mcqtune.errors import ArtifactError
from mcqtune.methods import get_method
from mcqtune.methods.base import cast_frozen_matmul_weights
from mcqtune.models import ResolvedModel, config_hash, load_model, load_tokenizer, resolve_model
from mcqtune.prompt import PromptConfig

MANIFEST = "mcqtune.json"
ADAPTER_DIR = "adapter"
CONFIG_FILE = "config.yaml"
METRICS = "metrics.json"  # also the metrics file of an `eval --report` directory
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".mcqtune.lock"
EXPORT_MANIFEST = "mcqtune_export.json"  # written by `mcqtune export` into a model directory
MANIFEST_VERSION = 1


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    resolved: ResolvedModel
    manifest: dict[str, Any] | None
    # mcqtune_export.json of a model directory written by `mcqtune export`: its training prompt and scoring.
    exported: dict[str, Any] | None = None

    @property
    def prompt(self) -> PromptConfig:
        return PromptConfig.from_dict((self.manifest or self.exported or {}).get("prompt"))


def save_artifact(model: torch.nn.Module, output: Path, manifest: dict[str, Any]) -> int:
    """Save the trained part (atomically) and the manifest; returns the artifact size in bytes."""
    method = get_method(manifest["method"])
    with atomic_directory(output / ADAPTER_DIR) as tmp:
        method.save(model, tmp)
        size = directory_bytes(tmp)
    manifest = {"manifest_version": MANIFEST_VERSION, "mcqtune_version": __version__, **manifest}
    manifest["artifact_bytes"] = size
    atomic_write_json(output / MANIFEST, manifest)
    return size


def read_manifest(directory: Path | str) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a directory (expected a mcqtune run directory)")
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}; is this a mcqtune run directory?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: corrupt manifest ({exc})") from None
    for key in ("method", "base_model", "base_config_hash"):
        if key not in manifest:
            raise ArtifactError(f"{path}: manifest lacks '{key}'")
    if not (directory / ADAPTER_DIR).is_dir():
        raise ArtifactError(f"{directory}: manifest present but '{ADAPTER_DIR}/' is missing")
    return manifest


def load_for_inference(
    model_spec: str | None,
    adapter: Path | str | None,
    device: torch.device,
    *,
    precision: str = "fp32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the base (from the manifest unless ``model_spec`` is given) and attach the artifact.

    ``precision="bf16"`` (scoring under bf16 autocast) stores the frozen base's linear weights in bf16:
    the same scores, half their memory (``Method.prepare_base``); ``"fp32"`` keeps every weight fp32.
    """
    manifest = read_manifest(adapter) if adapter else None
    spec = model_spec or (manifest["base_model"] if manifest else None)
    resolved = resolve_model(spec)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    if manifest is None:
        base = load_model(resolved, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle).to(device)
        if precision == "bf16":
            cast_frozen_matmul_weights(base, torch.bfloat16, frozen_only=False)
        return LoadedModel(base, tokenizer, resolved, None, _export_info(resolved))
    method = get_method(manifest["method"])
    options = manifest.get("method_options", {})
    base: PreTrainedModel = method.load_base(resolved, options, device)
    method.prepare_base(base, precision)
    found = config_hash(base)
    if found != manifest["base_config_hash"]:
        raise ArtifactError(
            f"{adapter}: trained on base model '{manifest['base_model']}' (config hash "
            f"{manifest['base_config_hash']}), but '{resolved.spec}' has config hash {found}; "
            "pass the matching --model"
        )
    try:
        model = method.load(base, Path(adapter) / ADAPTER_DIR, options)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ArtifactError(
            f"{adapter}/{ADAPTER_DIR}: could not load the {manifest['method']} artifact: {exc}"
        ) from None
    model.eval()
    return LoadedModel(model, tokenizer, resolved, manifest)


def _export_info(resolved: ResolvedModel) -> dict[str, Any] | None:
    """The record `mcqtune export` leaves in a model directory, if this model is one."""
    if not resolved.is_local:
        return None
    path = Path(resolved.path) / EXPORT_MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def base_identity(resolved: ResolvedModel, base: PreTrainedModel) -> dict[str, str]:
    """How the manifest names its base: an id resolve_model() finds again, and the config hash."""
    return {"base_model": resolved.model_id, "base_config_hash": config_hash(base)}
