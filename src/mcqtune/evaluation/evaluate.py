"""The ``evaluate`` stage's model-running part: every option of every question scored in batches.

What the scores mean (accuracy, letter bias, calibration) is :mod:`mcqtune.evaluation.metrics`; scoring
under option permutations and debiasing is :mod:`mcqtune.evaluation.analysis`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from mcqtune.data import MCQExample
from mcqtune.distributed import gather_from_all, my_share
from mcqtune.evaluation.metrics import ScoredExamples
from mcqtune.progress import steps
from mcqtune.prompt import PromptEncoder
from mcqtune.scoring import cloze_forward, collate_cloze, collate_letter, letter_forward


def autocast_context(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    """bf16 autocast where asked (matmul is ~4x faster than fp32 on AVX-512-bf16 CPUs)."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _length_sorted_batches(
    features: list[Any], length: Callable[[Any], int], batch_size: int
) -> list[list[Any]]:
    ordered = sorted(features, key=length, reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


@torch.no_grad()
def score_examples(
    model: torch.nn.Module,
    encoder: PromptEncoder,
    examples: list[MCQExample],
    scoring: str,
    *,
    batch_size: int = 16,
    packed: bool = True,
    precision: str = "fp32",
    device: torch.device | None = None,
    row_adapters: Sequence[str] | None = None,
) -> ScoredExamples:
    """Score every option of every question in length-sorted batches; one forward per batch.

    ``row_adapters``: the artifact of each example, for a peft model holding several (its per-row
    ``adapter_names``), so that questions for different artifacts share a forward pass.
    Under a multi-process launch every process calls this with the same ``examples``: each scores
    every N-th batch of the very batches one process would score (so each score is bit for bit the
    single-process one) and the scores are gathered once, onto every process.
    """
    device = device or next(model.parameters()).device
    autocast = autocast_context(device, precision)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    pad_id = encoder.tokenizer.pad_token_id
    n_options = max(len(e.choices) for e in examples)
    scores = np.full((len(examples), n_options), -np.inf, dtype=np.float64)
    if scoring == "letter":
        encoded = encoder.encode_letter(examples, with_answer=False)
        batches = _length_sorted_batches(encoded.features, lambda f: len(f.input_ids), batch_size)
    elif scoring == "cloze":
        encoded = encoder.encode_cloze(examples)
        # Packed rows hold all options: fewer questions per batch keeps memory flat.
        batches = _length_sorted_batches(encoded.features, lambda f: f.length, batch_size)
    else:
        raise ValueError(f"unknown scoring '{scoring}'")
    scored_rows: list[tuple[int, np.ndarray]] = []
    for group in steps(my_share(batches), "batch"):
        keys = [row_adapters[f.index] for f in group] if row_adapters is not None else None
        with autocast():
            if scoring == "letter":  # packed: the rows' common prompt start runs once, for one artifact
                one_artifact = keys is None or len(set(keys)) == 1
                batch = collate_letter(group, pad_id, share_prefix=packed and one_artifact).to(device)
                rows = range(len(group))
            else:
                # Packed: questions shorter than the batch's longest share its rows (no padding).
                batch = collate_cloze(group, pad_id, packed=packed, pack_questions=packed, keys=keys)
                batch = batch.to(device)
                rows = batch.row_question
            forward = prefix_forward = model
            if keys is not None:  # one artifact per model row
                forward = functools.partial(model, adapter_names=[keys[q] for q in rows])
                prefix_forward = functools.partial(model, adapter_names=keys[:1])
            if scoring == "letter":
                _, batch_scores = letter_forward(forward, batch, with_loss=False, prefix_model=prefix_forward)
            else:
                batch_scores = cloze_forward(forward, batch)
        values = batch_scores.float().cpu().numpy()
        scored_rows += [(i, values[row, : len(examples[i].choices)]) for row, i in enumerate(batch.indices)]
    for index, option_scores in gather_from_all(scored_rows):
        scores[index, : len(option_scores)] = option_scores
    if was_training:
        model.train()
    kept = np.ones(len(examples), dtype=bool)
    for index, _ in encoded.skipped:
        kept[index] = False
    return ScoredExamples(
        examples=[e for e, k in zip(examples, kept, strict=True) if k],
        scores=scores[kept],
        scoring=scoring,
        skipped=encoded.skipped,
        seconds=time.perf_counter() - start,
    )
