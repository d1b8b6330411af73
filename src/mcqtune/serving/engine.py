"""The scoring engine the server drives: one base model, named artifacts attached to it, option scores.

This is the server's thin adapter over the inference layer: :class:`Engine` is the interface the
registry and the batcher use. :func:`open_engine` returns the shared-base ``mcqtune.inference.Predictor``
when that module is present and otherwise :class:`SeparateCopiesEngine`, which loads each artifact with
its own copy of the base (same scores, more memory) so the server works either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mcqtune.data import MCQExample
from mcqtune.errors import ArtifactError

METRICS_FILE = "metrics.json"  # written last by `mcqtune train`; holds the validation accuracy


@dataclass(frozen=True)
class ArtifactInfo:
    """What ``GET /v1/adapters`` shows about one attached artifact (``None`` name: the base zero-shot)."""

    name: str | None
    method: str
    scoring: str
    trainable_parameters: int
    base: str
    validation_accuracy: float | None
    path: str | None
    artifact_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "formulation": self.scoring,
            "trainable_parameters": self.trainable_parameters,
            "base": self.base,
            "validation_accuracy": self.validation_accuracy,
            "artifact_bytes": self.artifact_bytes,
        }


@dataclass
class Scores:
    """Option scores for a list of questions; ``None`` rows did not fit the model's max length."""

    scoring: str
    rows: list[np.ndarray | None]


class Engine(Protocol):
    base_id: str

    def base_info(self) -> ArtifactInfo: ...

    def attach(self, name: str, run_dir: Path) -> ArtifactInfo: ...

    def detach(self, name: str) -> None: ...

    def score(self, examples: list[MCQExample], adapter: str | None) -> Scores: ...


def validation_accuracy(run_dir: Path) -> float | None:
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return (metrics.get("validation") or {}).get("accuracy")


def artifact_info(name: str, run_dir: Path, manifest: dict[str, Any]) -> ArtifactInfo:
    return ArtifactInfo(
        name=name,
        method=manifest["method"],
        scoring=manifest.get("scoring", "letter"),
        trainable_parameters=int((manifest.get("parameters") or {}).get("trainable", 0)),
        base=manifest["base_model"],
        validation_accuracy=validation_accuracy(run_dir),
        path=str(run_dir),
        artifact_bytes=int(manifest.get("artifact_bytes", 0)),
    )


def check_same_base(run_dir: Path, manifest: dict[str, Any], base_id: str, base_hash: str) -> None:
    """Refuse an artifact trained on another base before any of its weights are read."""
    if manifest["base_config_hash"] != base_hash:
        raise ArtifactError(
            f"{run_dir}: trained on base '{manifest['base_model']}' (config hash "
            f"{manifest['base_config_hash']}), but the server's base '{base_id}' has config hash "
            f"{base_hash}; serve it with --model {manifest['base_model']}"
        )


def _rows(scored: Any, n: int) -> list[np.ndarray | None]:
    """Map a ScoredExamples (skipped rows removed) back to one row per input question."""
    skipped = {index for index, _ in scored.skipped}
    kept = iter(range(len(scored.examples)))
    rows: list[np.ndarray | None] = []
    for index in range(n):
        if index in skipped:
            rows.append(None)
            continue
        row = next(kept)
        k = len(scored.examples[row].choices)
        rows.append(np.asarray(scored.scores[row, :k], dtype=np.float64))
    return rows


class SeparateCopiesEngine:
    """Fallback engine: every artifact is loaded by ``load_for_inference`` with its own base copy."""

    def __init__(self, model_spec: str | None, device: torch.device, precision: str, batch_size: int) -> None:
        from mcqtune.artifacts import load_for_inference
        from mcqtune.models import config_hash

        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.base = load_for_inference(model_spec, None, device, precision=precision)
        self.base_id = self.base.resolved.model_id
        self.base_hash = config_hash(self.base.model)
        self._loaded: dict[str, tuple[Any, ArtifactInfo]] = {}

    def base_info(self) -> ArtifactInfo:
        from mcqtune.config import resolve_scoring

        return ArtifactInfo(
            name=None,
            method="zero-shot",
            scoring=resolve_scoring("auto", self.base.model.num_parameters()),
            trainable_parameters=0,
            base=self.base_id,
            validation_accuracy=None,
            path=None,
            artifact_bytes=0,
        )

    def attach(self, name: str, run_dir: Path) -> ArtifactInfo:
        from mcqtune.artifacts import load_for_inference, read_manifest
        from mcqtune.preflight import check_adapter_dir

        check_adapter_dir(run_dir)
        manifest = read_manifest(run_dir)
        check_same_base(run_dir, manifest, self.base_id, self.base_hash)
        loaded = load_for_inference(self.base.resolved.spec, run_dir, self.device, precision=self.precision)
        info = artifact_info(name, run_dir, manifest)
        self._loaded[name] = (loaded, info)
        return info

    def detach(self, name: str) -> None:
        self._loaded.pop(name, None)

    def score(self, examples: list[MCQExample], adapter: str | None) -> Scores:
        from mcqtune.evaluation.evaluate import score_examples
        from mcqtune.prompt import PromptEncoder

        loaded, info = self._loaded[adapter] if adapter is not None else (self.base, self.base_info())
        scored = score_examples(
            loaded.model,
            PromptEncoder(loaded.tokenizer, loaded.prompt),
            examples,
            info.scoring,
            batch_size=self.batch_size,
            packed=(loaded.manifest or {}).get("packing", True),
            precision=self.precision,
            device=self.device,
        )
        return Scores(info.scoring, _rows(scored, len(examples)))


def open_engine(model_spec: str | None, precision: str, batch_size: int) -> Engine:
    from mcqtune.evaluation.evaluate import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return SeparateCopiesEngine(model_spec, device, resolve_precision(precision, device), batch_size)
