"""The scoring engine the server drives: one base model, named artifacts attached to it, option scores.

This is the server's thin adapter over the inference layer (:class:`mcqtune.inference.Predictor`):
:class:`Engine` is the interface the registry and the batcher use, and :class:`PredictorEngine` maps it
onto the Predictor (plus an LRU ``detach``, which the Predictor does not have yet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mcqtune.data import MCQExample
from mcqtune.inference import Predictor
from mcqtune.training.recipe import METRICS


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
        """Drop an artifact and the tensors only it holds.

        ``Predictor`` has no detach of its own yet, so this reaches into it: deactivate the artifact,
        forget it, then free what its method keeps: the whole model view when no other artifact uses it
        (always so for ``full``, which has its own model), else its peft/AdapterHub named adapter or
        its subset tensors.
        """
        predictor = self.predictor
        with predictor._lock:
            artifact = predictor.artifacts.pop(name, None)
            if artifact is None:
                return
            if predictor._active is artifact:
                predictor._deactivate()
            holder = predictor._holders[artifact.holder]
            if not any(other.holder == artifact.holder for other in predictor.artifacts.values()):
                del predictor._holders[artifact.holder]  # its last artifact: the whole view goes
            elif hasattr(holder, "mcqtune_subset_swaps"):
                holder.mcqtune_subset_swaps.artifacts.pop(name, None)
            elif hasattr(holder, "delete_adapter"):
                holder.delete_adapter(name)

    def score(self, examples: list[MCQExample], adapter: str | None) -> Scores:
        result = self.predictor.score(examples, adapter, batch_size=self.batch_size)
        return Scores(result.scored.scoring, _rows(result.scored, len(examples)))

    def score_groups(self, groups: dict[str | None, list[MCQExample]]) -> dict[str | None, Scores]:
        """Each artifact's questions; LoRA artifacts on one peft model that score alike share one
        forward pass (peft's per-row ``adapter_names``), the others get one pass per artifact."""
        buckets: dict[tuple, list[str]] = {}
        for adapter in groups:
            key = self._mixed_batch_key(adapter)
            if key is not None:
                buckets.setdefault(key, []).append(adapter)
        results: dict[str | None, Scores] = {}
        for names in buckets.values():
            if len(names) > 1:
                results.update(self._score_mixed({name: groups[name] for name in names}))
        for adapter, examples in groups.items():
            if adapter not in results:
                results[adapter] = self.score(examples, adapter)
        return results

    def _mixed_batch_key(self, adapter: str | None) -> tuple | None:
        """Artifacts with equal keys can share a pass: LoRA adapters (not DoRA, which peft cannot
        mix) on the same peft model with the same formulation, prompt and packing; None otherwise."""
        from peft import LoraConfig

        artifact = self.predictor.artifacts.get(adapter) if adapter is not None else None
        if artifact is None:
            return None
        holder = self.predictor._holders[artifact.holder]
        config = getattr(holder, "peft_config", {}).get(artifact.name)
        if not isinstance(config, LoraConfig) or config.use_dora:
            return None
        prompt = json.dumps(artifact.prompt.to_dict(), sort_keys=True)
        return (artifact.holder, artifact.scoring, prompt, artifact.packed)

    def _score_mixed(self, groups: dict[str, list[MCQExample]]) -> dict[str, Scores]:
        from mcqtune.evaluation.evaluate import autocast_context
        from mcqtune.prompt import PromptEncoder
        from mcqtune.scoring import cloze_forward, collate_cloze, collate_letter, letter_forward

        predictor = self.predictor
        names = list(groups)
        examples = [e for name in names for e in groups[name]]
        owner = [name for name in names for _ in groups[name]]
        first = predictor.artifacts[names[0]]
        encoder = PromptEncoder(predictor.tokenizer, first.prompt)
        pad_id = predictor.tokenizer.pad_token_id
        rows: list[np.ndarray | None] = [None] * len(examples)
        with predictor._lock:
            model = predictor.module(names[0])
            if first.scoring == "letter":
                encoded = encoder.encode_letter(examples, with_answer=False)
            else:
                encoded = encoder.encode_cloze(examples)
            if encoded.features:
                # One adapter name per model row (unpacked cloze has a row per option).
                per_row = [
                    owner[f.index]
                    for f in encoded.features
                    for _ in range(1 if first.scoring == "letter" or first.packed else len(f.option_ids))
                ]

                def forward(**kwargs):
                    return model(**kwargs, adapter_names=per_row)

                with torch.no_grad(), autocast_context(predictor.device, predictor.precision)():
                    if first.scoring == "letter":
                        batch = collate_letter(encoded.features, pad_id).to(predictor.device)
                        _, scores = letter_forward(forward, batch, with_loss=False)
                    else:
                        batch = collate_cloze(encoded.features, pad_id, packed=first.packed)
                        scores = cloze_forward(forward, batch.to(predictor.device))
                values = scores.float().cpu().numpy()
                for row, index in enumerate(batch.indices):
                    rows[index] = values[row, : len(examples[index].choices)].astype(np.float64)
        self.mixed_passes += 1
        results: dict[str, Scores] = {}
        start = 0
        for name in names:
            results[name] = Scores(first.scoring, rows[start : start + len(groups[name])])
            start += len(groups[name])
        return results


def open_engine(model_spec: str | None, precision: str, batch_size: int) -> Engine:
    from mcqtune.inference import Predictor

    return PredictorEngine(Predictor(model_spec, precision=precision), batch_size)
