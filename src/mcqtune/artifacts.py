"""Trained artifacts: what a run directory holds, how it is saved and how its manifest is read back.

Layout of a run directory::

    adapter/        only what was trained, safetensors (a standard peft adapter for LoRA/QLoRA)
    mcqtune.json    manifest: method, options, objective/scoring, prompt, base model id + config hash
    config.yaml     the fully resolved training config
    metrics.json    validation metrics and training history
    .mcqtune.lock   held while train writes the directory
    checkpoints/    what an unfinished run resumes from (removed when it finishes)

Loading an artifact for inference is :class:`mcqtune.inference.Predictor`'s job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from mcqtune import __version__
from mcqtune.atomic import atomic_directory, atomic_write_json, directory_bytes
from mcqtune.errors import ArtifactError
from mcqtune.methods import get_method
from mcqtune.models import ResolvedModel, config_hash

MANIFEST = "mcqtune.json"
ADAPTER_DIR = "adapter"
LOCK_FILE = ".mcqtune.lock"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST_VERSION = 1


EXPORT_MANIFEST = "mcqtune_export.json"  # written by `mcqtune export` (mcqtune.export)


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
        if (directory / LOCK_FILE).exists() or (directory / CHECKPOINTS_DIR).is_dir():
            raise ArtifactError(
                f"{directory}: this run did not finish (no {MANIFEST} yet); "
                "re-run the same train command to resume it"
            )
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


def export_info(resolved: ResolvedModel) -> dict[str, Any] | None:
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
