"""The scoring engine the server drives: one base model, named artifacts attached to it, option scores.

This is the server's thin adapter over the inference layer (:class:`mcqtune.inference.Predictor`):
:class:`Engine` is the interface the registry and the batcher use, and :class:`PredictorEngine` maps it
onto the Predictor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mcqtune.artifacts import METRICS
from mcqtune.data import MCQExample
from mcqtune.inference import Predictor


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
    temperature: float | None = None  # the artifact's calibration temperature (None: uncalibrated)


class Engine(Protocol):
    base_id: str
    predictor: Predictor  # the OpenAI endpoints' plain language-model work goes straight to it

    def base_info(self) -> ArtifactInfo: ...

    def attach(self, name: str, run_dir: Path) -> ArtifactInfo: ...

    def detach(self, name: str) -> None: ...

    def score(self, examples: list[MCQExample], adapter: str | None) -> Scores: ...

    def score_groups(self, groups: dict[str | None, list[MCQExample]]) -> dict[str | None, Scores]: ...


def validation_accuracy(run_dir: Path) -> float | None:
    try:
        metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
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


class PredictorEngine:
    """The server's engine over :class:`mcqtune.inference.Predictor` (one base, artifacts by name)."""

    def __init__(self, predictor: Predictor, batch_size: int) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.base_id = predictor.model_id
        self.mixed_passes = 0  # forward passes that served several LoRA artifacts at once
        predictor.base()  # load the base now: the first request should not pay for it

    def base_info(self) -> ArtifactInfo:
        return ArtifactInfo(
            name=None,
            method="zero-shot",
            scoring=self.predictor.scoring(None),
            trainable_parameters=0,
            base=self.base_id,
            validation_accuracy=None,
            path=None,
            artifact_bytes=0,
        )

    def attach(self, name: str, run_dir: Path) -> ArtifactInfo:
        artifact = self.predictor.attach(name, run_dir)
        return artifact_info(name, Path(run_dir), artifact.manifest)

    def detach(self, name: str) -> None:
        self.predictor.detach(name)

    def score(self, examples: list[MCQExample], adapter: str | None) -> Scores:
        result = self.predictor.score(examples, adapter, batch_size=self.batch_size)
        return Scores(result.scored.scoring, _rows(result.scored, len(examples)), result.temperature)

    def score_groups(self, groups: dict[str | None, list[MCQExample]]) -> dict[str | None, Scores]:
        """Each artifact's questions; artifacts that can share a forward pass (LoRA adapters on one
        peft model that score alike: ``Predictor.mix_key``) get one together, the others one each."""
        buckets: dict[tuple, list[str]] = {}
        for adapter in groups:
            key = self.predictor.mix_key(adapter)
            if key is not None:
                buckets.setdefault(key, []).append(adapter)  # type: ignore[arg-type]  # key: a name
        results: dict[str | None, Scores] = {}
        for names in buckets.values():
            if len(names) > 1:
                results.update(self._score_mixed({name: groups[name] for name in names}))
        for adapter, examples in groups.items():
            if adapter not in results:
                results[adapter] = self.score(examples, adapter)
        return results

    def _score_mixed(self, groups: dict[str, list[MCQExample]]) -> dict[str, Scores]:
        examples = [e for examples in groups.values() for e in examples]
        owners = [name for name, examples in groups.items() for _ in examples]
        scored = self.predictor.score_mixed(examples, owners, batch_size=self.batch_size)
        self.mixed_passes += 1
        rows = _rows(scored, len(examples))
        results: dict[str, Scores] = {}
        start = 0
        for name, examples in groups.items():
            temperature = self.predictor.temperature(name)
            results[name] = Scores(scored.scoring, rows[start : start + len(examples)], temperature)
            start += len(examples)
        return results


def open_engine(model_spec: str | None, precision: str, batch_size: int) -> Engine:
    from mcqtune.inference import Predictor

    return PredictorEngine(Predictor(model_spec, precision=precision), batch_size)
