"""``mcqtune export``: turn a run directory into a plain Hugging Face model directory.

LoRA and QLoRA are merged into the base (``Method.merge``: QLoRA is dequantized to fp32 first), ``full``
and ``subset`` runs are loaded onto the base and saved whole. The result loads with
``AutoModelForCausalLM.from_pretrained`` (and ``mcqtune eval --model DIR``) with no peft, bitsandbytes or
mcqtune. Before writing, the merged model's option scores are checked against the unmerged model's on
a few validation questions, so an export that changed the model's answers is never written silently.
Bottleneck adapters and prefixes cannot be folded into the weights; exporting them is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcqtune import __version__
from mcqtune.artifacts import CONFIG_FILE, EXPORT_MANIFEST, read_manifest
from mcqtune.atomic import atomic_directory, atomic_write_json, directory_bytes
from mcqtune.data import DataRef, FieldMap, MCQExample
from mcqtune.errors import ExportError
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.inference import Predictor
from mcqtune.methods import get_method
from mcqtune.methods.base import Method
from mcqtune.prompt import PromptEncoder

MERGED_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ExportResult:
    output: Path
    method: str
    bytes: int
    checked_questions: int
    max_score_difference: float | None
    same_predictions: bool | None


def _check_rows(run_dir: Path, limit: int) -> list[MCQExample]:
    """The first ``limit`` questions of the run's validation data (else its training data)."""
    import yaml

    config_path = run_dir / CONFIG_FILE
    if limit <= 0 or not config_path.is_file():
        return []
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    for key in ("validation", "train"):
        if config.get(key):
            try:
                ref = DataRef.parse(config[key], key, config.get("subset"))
                field_map = FieldMap.from_config(config)
                return ref.load(config.get("format", "auto"), field_map, limit=limit).examples
            except (OSError, ValueError):
                continue  # data moved since training: export without the check, and say so
    return []


def export_run(
    run_dir: Path | str,
    output: Path | str,
    *,
    dtype: str = "fp32",
    check_questions: int = 8,
    tolerance: float | None = None,
) -> ExportResult:
    """Merge/save the run in ``run_dir`` as a plain HF model directory at ``output`` (atomically)."""
    run_dir, output = Path(run_dir), Path(output)
    manifest = read_manifest(run_dir)
    method = get_method(manifest["method"])
    # A method that trains base weights (full, subset) leaves a plain model; a frozen-base method must
    # know how to fold its parameters into the base (LoRA, QLoRA).
    can_merge = type(method).merge is not Method.merge
    if method.frozen_base and not can_merge:
        raise ExportError(
            f"{run_dir}: a {manifest['method']} run cannot be merged into the base weights (it adds "
            "modules or key/values the base architecture lacks); use it with --run, or train lora"
        )
    if dtype not in MERGED_DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(MERGED_DTYPES)}, got '{dtype}'")
    device = torch.device("cpu")  # merged and checked in fp32 on the CPU, whatever the machine has
    name = run_dir.name
    predictor = Predictor.open(None, {name: run_dir}, device=device, precision="fp32")
    encoder = PromptEncoder(predictor.tokenizer, predictor.prompt(name))
    rows = _check_rows(run_dir, check_questions)
    scoring = predictor.scoring(name)
    model = predictor.module(name)
    before = score_examples(model, encoder, rows, scoring, device=device).scores if rows else None
    # full / subset: already a plain model with the trained weights in place
    merged = method.merge(model) if can_merge else model
    merged.eval()
    difference = same = None
    if before is not None:
        after = score_examples(merged, encoder, rows, scoring, device=device).scores
        difference = float(np.nanmax(np.abs(after - before)))
        same = bool((after.argmax(1) == before.argmax(1)).all())
        limit = tolerance if tolerance is not None else method.export_tolerance
        if difference > limit:
            raise ExportError(
                f"{run_dir}: the merged model's option scores differ from the unmerged model's by "
                f"{difference:.3g} on {len(rows)} validation questions (tolerance {limit:g}); not exporting"
            )
    merged.to(MERGED_DTYPES[dtype])
    with atomic_directory(output) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        predictor.tokenizer.save_pretrained(str(tmp))
        atomic_write_json(
            tmp / EXPORT_MANIFEST,
            {
                "exported_from": str(run_dir.resolve()),
                "method": manifest["method"],
                "base_model": manifest.get("base_model"),
                "base_config_hash": manifest.get("base_config_hash"),
                "dtype": dtype,
                # The prompt the run was trained with: eval/predict need it to score like the run did.
                "prompt": manifest.get("prompt"),
                "scoring": scoring,
                "check": {
                    "questions": len(rows),
                    "max_score_difference": difference,
                    "same_predictions": same,
                },
                "mcqtune_version": __version__,
            },
        )
        size = directory_bytes(tmp)
    return ExportResult(output, manifest["method"], size, len(rows), difference, same)


def describe(result: ExportResult) -> str:
    check = (
        f"checked on {result.checked_questions} validation questions: max option-score difference "
        f"{result.max_score_difference:.2e}, same predictions: {'yes' if result.same_predictions else 'no'}"
        if result.checked_questions
        else "not checked (the run's data could not be found)"
    )
    return (
        f"exported the {result.method} run as a plain Hugging Face model: {result.output} "
        f"({result.bytes / 2**20:.1f} MiB); {check}"
    )
