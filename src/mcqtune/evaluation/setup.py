"""How a run is scored, decided once: training's periodic validation, its final evaluation and compare's
worker (zero-shot base model, option permutations, further data sets) all build an :class:`EvalSetup`
from the run's config, so a compare row is scored exactly as ``train`` scored it.

The setup fixes packing (the method's rule, :meth:`~mcqtune.methods.base.Method.packs`), the row limit
(``eval_limit`` for periodic validation, ``final_eval_limit`` for every final score), the precision
(:func:`~mcqtune.models.resolve_precision` on the scoring device) and the batch size. Which data is
scored, and its display name, is the caller's (the data reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mcqtune.data import MCQExample
from mcqtune.evaluation.evaluate import score_examples
from mcqtune.evaluation.metrics import ScoredExamples
from mcqtune.models import resolve_precision
from mcqtune.prompt import PromptEncoder

if TYPE_CHECKING:
    from mcqtune.config import TrainConfig
    from mcqtune.methods.base import Method


@dataclass(frozen=True)
class EvalSetup:
    """Everything but the model and the data that decides a run's scores."""

    packed: bool
    limit: int | None  # score the first ``limit`` rows; None: all of them
    precision: str  # resolved: "bf16" or "fp32", never "auto"
    batch_size: int
    device: torch.device

    @classmethod
    def of_run(
        cls, config: TrainConfig, method: Method | None, device: torch.device, *, final: bool = True
    ) -> EvalSetup:
        """The final evaluation's setup (``final=False``: periodic validation's) of a run of ``method``
        on ``device``; ``method`` None is the base model untrained (zero-shot), which packs when asked."""
        return cls(
            packed=method.packs(config.packing) if method is not None else config.packing,
            limit=config.final_eval_limit if final else config.eval_limit,
            precision=resolve_precision(config.precision, device),
            batch_size=config.eval_batch_size,
            device=device,
        )

    def rows(self, examples: Sequence[MCQExample]) -> list[MCQExample]:
        """The rows this setup scores: the first ``limit`` of ``examples``."""
        return list(examples[: self.limit] if self.limit else examples)

    def score_kwargs(self) -> dict[str, Any]:
        """:func:`~mcqtune.evaluation.evaluate.score_examples`' keyword arguments (also taken by
        :func:`~mcqtune.evaluation.analysis.score_permutations`)."""
        return {
            "batch_size": self.batch_size,
            "packed": self.packed,
            "precision": self.precision,
            "device": self.device,
        }

    def score(
        self, model: torch.nn.Module, encoder: PromptEncoder, rows: list[MCQExample], scoring: str
    ) -> ScoredExamples:
        """Every option of every row of ``rows`` (already limited: :meth:`rows`) scored by ``model``."""
        return score_examples(model, encoder, rows, scoring, **self.score_kwargs())
