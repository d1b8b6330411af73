"""The training objectives: how features become batches and batches become a loss.

- :class:`LetterObjective`: LM cross-entropy on the answer letter token(s) after the seed prompt. Its
  prompt lists the options in order, so it can be trained with the options shuffled per epoch
  (:meth:`LetterObjective.shuffled`, ``--shuffle-options``);
- :class:`RankingObjective`: cross-entropy over the options' length-normalised log-likelihoods (cloze).
  Each option is scored on its own, so option order means nothing to it.

Both share one small interface (``encode``, ``length``, ``collate``, ``loss``, ``scoring``,
``order_sensitive``); the trainer asks these, never an objective's name.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mcqtune.config import OBJECTIVE_TO_SCORING
from mcqtune.data import MCQExample
from mcqtune.prompt import ClozeFeatures, Encoded, LetterFeatures, PromptEncoder
from mcqtune.scoring import (
    ClozeBatch,
    LetterBatch,
    cloze_forward,
    collate_cloze,
    collate_letter,
    letter_forward,
    ranking_loss,
)

log = logging.getLogger(__name__)


class Objective:
    """What every objective offers the trainer; subclasses set ``name`` and fill in the four steps."""

    name: ClassVar[str]
    # True when the prompt shows the options in order, so permuting them is a real augmentation.
    order_sensitive: ClassVar[bool] = False

    def __init__(self, encoder: PromptEncoder, packed: bool, share_prefix: bool = False):
        self.encoder = encoder
        self.packed = packed
        # Letter: run the leading tokens every row of a batch has in common once (scoring.collate_letter).
        self.share_prefix = share_prefix
        self.pad_id = encoder.tokenizer.pad_token_id

    @property
    def scoring(self) -> str:
        """The evaluation scoring that measures what this objective trains."""
        return OBJECTIVE_TO_SCORING[self.name]

    def encode(self, examples: list[MCQExample]) -> list[Any]:
        encoded = self._encode(examples)
        if encoded.skipped:
            log.warning("skipped %d training rows that do not fit max_length", len(encoded.skipped))
        return encoded.features

    def _encode(self, examples: list[MCQExample]) -> Encoded:
        raise NotImplementedError

    def length(self, feature: Any) -> int:
        raise NotImplementedError

    def collate(self, features: list[Any]) -> Any:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError


class LetterObjective(Objective):
    name = "letter"
    order_sensitive = True

    def _encode(self, examples: list[MCQExample]) -> Encoded:
        return self.encoder.encode_letter(examples, with_answer=True)

    def length(self, feature: LetterFeatures) -> int:
        return len(feature.input_ids)

    def collate(self, features: list[LetterFeatures]) -> LetterBatch:
        full_logits = self.encoder.config.train_on_prompt
        return collate_letter(features, self.pad_id, full_logits=full_logits, share_prefix=self.share_prefix)

    def loss(self, model: torch.nn.Module, batch: LetterBatch) -> torch.Tensor:
        loss, _ = letter_forward(model, batch, with_loss=True)
        return loss

    def shuffled(
        self, examples: Sequence[MCQExample], features: list[LetterFeatures], seed: int, epoch: int
    ) -> list[LetterFeatures]:
        """Re-encode one training batch with each example's options in this epoch's order.

        ``features[i].index`` points into ``examples`` (as :meth:`encode` made it). A row whose shuffled
        prompt no longer fits ``max_length`` keeps its original order.
        """
        moved = [shuffle_options(examples[f.index], seed, epoch, f.index) for f in features]
        by_position = {f.index: f for f in self._encode(moved).features}
        out = []
        for position, original in enumerate(features):
            new = by_position.get(position)
            out.append(original if new is None else dataclasses.replace(new, index=original.index))
        return out


class RankingObjective(Objective):
    name = "ranking"

    def _encode(self, examples: list[MCQExample]) -> Encoded:
        return self.encoder.encode_cloze(examples)

    def length(self, feature: ClozeFeatures) -> int:
        return feature.length

    def collate(self, features: list[ClozeFeatures]) -> ClozeBatch:
        return collate_cloze(features, self.pad_id, packed=self.packed)

    def loss(self, model: torch.nn.Module, batch: ClozeBatch) -> torch.Tensor:
        return ranking_loss(cloze_forward(model, batch), batch.answers)


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (LetterObjective, RankingObjective)}


def make_objective(name: str, encoder: PromptEncoder, packed: bool, share_prefix: bool = False) -> Objective:
    """The objective called ``name`` (a resolved name: ``letter`` or ``ranking``, never ``auto``)."""
    return OBJECTIVES[name](encoder, packed, share_prefix)


def shuffle_options(example: MCQExample, seed: int, epoch: int, index: int) -> MCQExample:
    """A deterministic random order of ``example``'s options for (seed, epoch, row), answer remapped."""
    perm = list(range(len(example.choices)))
    random.Random(f"mcqtune-shuffle-{seed}-{epoch}-{index}").shuffle(perm)
    return example.permuted(perm)
