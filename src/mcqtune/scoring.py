"""Batches and forward passes shared by training and evaluation.

Both formulations reduce a question to one score per option, so training (loss) and evaluation
(argmax) use the same forward code:

- letter: one forward pass over prompt (+ answer); logits are computed only at the answer position(s)
  via ``logits_to_keep`` (the 49k-vocabulary LM head over every position would dominate the cost);
  option k's score is the log-probability of its letter token. Every row of a batch starts with the
  same instruction ("Choose the correct option...", 16 of ~79 tokens on MedMCQA): with ``share_prefix``
  those tokens run once, as a one-row pass whose keys/values every row then continues from (same
  positions, so the same numbers; gradients flow back through the shared pass).
- cloze: option k's score is the mean log-probability of its tokens after the question. By default the
  options are *packed* after one copy of the question, with positions restarting at the end of the
  question and a 4D attention mask that keeps options from seeing each other, which gives the same
  numbers as K separate sequences at roughly 1/K of the question cost. Scoring also lets short
  questions share a row (``pack_questions``), each masked off from the others, so a batch of mixed
  lengths (the server's) is not padded to its longest. Methods that cannot take a 4D mask (prefix tuning
  prepends its own key/values) fall back to one row per option ("copies").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mcqtune.prompt import ClozeFeatures, LetterFeatures

NEG_INF = float("-inf")


@dataclass
class LetterBatch:
    input_ids: torch.Tensor  # (B, T), left-padded: each row after the shared prefix
    attention_mask: torch.Tensor  # (B, P + T): the shared prefix (all ones), then the rows
    labels: torch.Tensor  # (B, T), -100 on prompt and padding
    keep: int  # logits kept at the tail
    score_pos: torch.Tensor  # (B,), index into the kept tail predicting the answer's first token
    letter_ids: torch.Tensor  # (B, K)
    option_mask: torch.Tensor  # (B, K), True where the option exists
    answers: torch.Tensor  # (B,), -1 when unknown
    indices: list[int]
    real_tokens: int  # non-pad positions computed: the shared prefix counts once
    prefix_ids: torch.Tensor | None = None  # (1, P): the tokens every row starts with, run once
    position_ids: torch.Tensor | None = None  # (B, T) with a shared prefix: continuing from P

    def to(self, device: torch.device) -> LetterBatch:
        return _move(self, device)

    @property
    def computed_tokens(self) -> int:
        """Every position the model runs, padding included."""
        prefix = 0 if self.prefix_ids is None else self.prefix_ids.shape[1]
        return prefix + self.input_ids.numel()


@dataclass
class ClozeBatch:
    input_ids: torch.Tensor  # (R, T), left-padded
    attention_mask: torch.Tensor  # (R, T) or (R, 1, T, T) bool when packed
    position_ids: torch.Tensor | None  # (R, T) when packed
    keep: int | torch.Tensor  # logits kept: a tail of this many columns, or these columns (C,)
    target_row: torch.Tensor  # (N,) row of each scored token
    target_pos: torch.Tensor  # (N,) index into the kept logits of the one that predicts it
    target_token: torch.Tensor  # (N,)
    target_slot: torch.Tensor  # (N,) question * K + option
    option_mask: torch.Tensor  # (B, K)
    answers: torch.Tensor  # (B,)
    indices: list[int]
    row_question: list[int]  # (R,) the question (index in the batch) of each row; rows share no artifact
    real_tokens: int

    def to(self, device: torch.device) -> ClozeBatch:
        return _move(self, device)

    @property
    def computed_tokens(self) -> int:
        """Every position the model runs, padding included."""
        return self.input_ids.numel()


def _move(batch, device):
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            setattr(batch, name, value.to(device, non_blocking=True))
    return batch


def _math_sdpa_when_training_on_cpu(original):
    """Wrap transformers' "sdpa" attention so that modules in training mode on CPU use torch's math SDPA
    kernel. The CPU flash-attention kernel torch picks by default has a slow *backward* at these short
    sequences (~12 ms per layer for 4 x 75 tokens, ~10% of a LoRA step, docs/PERFORMANCE.md) while its
    forward is as fast as math, so evaluation (modules in eval mode) and GPUs keep torch's choice. Keyed on
    ``module.training`` rather than on grad mode, so gradient-checkpointing recomputation (which runs in
    the backward pass) picks the same kernel as the forward it replays."""

    def sdpa_attention(module, query, *args, **kwargs):
        if module.training and query.device.type == "cpu":
            with sdpa_kernel(SDPBackend.MATH):
                return original(module, query, *args, **kwargs)
        return original(module, query, *args, **kwargs)

    sdpa_attention.mcqtune_wraps = original
    return sdpa_attention


def use_math_sdpa_for_cpu_training(enabled: bool = True) -> None:
    """(Un)register the wrapper above as transformers' "sdpa" attention; done once when this module loads."""
    from transformers.modeling_utils import AttentionInterface

    current = AttentionInterface._global_mapping["sdpa"]
    original = getattr(current, "mcqtune_wraps", current)
    AttentionInterface.register("sdpa", _math_sdpa_when_training_on_cpu(original) if enabled else original)


use_math_sdpa_for_cpu_training()


def _answers(features) -> torch.Tensor:
    return torch.tensor([-1 if f.answer is None else f.answer for f in features], dtype=torch.long)


# Fewer leading tokens in common than this and a batch runs as it is: the one-row pass for the prefix
# is a second trip through every layer, which a handful of tokens does not pay for.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(features: Sequence[LetterFeatures]) -> int:
    """How many leading tokens every row has in common, stopping before the shortest prompt's last token
    (each row keeps the positions whose logits are scored); 0 below ``MIN_SHARED_PREFIX`` or one row."""
    if len(features) < 2:
        return 0
    limit = min(f.prompt_length for f in features) - 1
    first = features[0].input_ids
    length = 0
    while length < limit and all(f.input_ids[length] == first[length] for f in features):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def collate_letter(
    features: list[LetterFeatures], pad_id: int, full_logits: bool = False, share_prefix: bool = False
) -> LetterBatch:
    """Left-pad so every prompt ends at the same column; keep logits only for the answer tail.

    ``share_prefix``: the leading tokens all rows have in common become ``prefix_ids``, run once
    (``letter_forward``); not with ``full_logits``, whose loss covers the prompt's every position."""
    prefix = shared_prefix_length(features) if share_prefix and not full_logits else 0
    width = max(len(f.input_ids) for f in features) - prefix
    n_options = max(len(f.letter_ids) for f in features)
    batch = len(features)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    letter_ids = torch.zeros((batch, n_options), dtype=torch.long)
    option_mask = torch.zeros((batch, n_options), dtype=torch.bool)
    answer_lengths = [len(f.input_ids) - f.prompt_length for f in features]
    for row, f in enumerate(features):
        n = len(f.input_ids) - prefix
        input_ids[row, width - n :] = torch.tensor(f.input_ids[prefix:])
        attention_mask[row, width - n :] = 1
        labels[row, width - n :] = torch.tensor(f.labels[prefix:])
        letter_ids[row, : len(f.letter_ids)] = torch.tensor(f.letter_ids)
        option_mask[row, : len(f.letter_ids)] = True
    keep = width if full_logits else max(answer_lengths) + 1
    score_pos = torch.tensor([keep - a - 1 for a in answer_lengths], dtype=torch.long)
    real_tokens = int(attention_mask.sum()) + prefix
    prefix_ids = position_ids = None
    if prefix:
        prefix_ids = torch.tensor([features[0].input_ids[:prefix]])
        position_ids = prefix + (attention_mask.cumsum(1) - 1).clamp(min=0)
        attention_mask = torch.cat([torch.ones((batch, prefix), dtype=torch.long), attention_mask], 1)
    return LetterBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        keep=keep,
        score_pos=score_pos,
        letter_ids=letter_ids,
        option_mask=option_mask,
        answers=_answers(features),
        indices=[f.index for f in features],
        real_tokens=real_tokens,
        prefix_ids=prefix_ids,
        position_ids=position_ids,
    )


def kept_columns(keep: int | torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``logits_to_keep`` as column indices (C,), never as a count.

    Given a count, transformers slices the hidden states (``h[:, -keep:, :]``); torch's linear takes that
    strided 3D view down a batched-matmul path that copies the whole 49k x 576 LM head weight once per
    row: 126 ms for a 7-token tail of one row vs 5.6 ms, 600 ms at 5 rows (bf16, this CPU; PERFORMANCE.md
    lever log). Given indices, the hidden states are gathered into a fresh tensor and the head is one mm.
    """
    if isinstance(keep, torch.Tensor):
        return keep
    width = input_ids.shape[1]
    return torch.arange(width - keep, width, device=input_ids.device)


def shared_prefix_cache(model: Callable[..., Any], prefix_ids: torch.Tensor, rows: int) -> Any:
    """Run the tokens every row starts with once and repeat their keys/values for ``rows`` rows: the
    cache the rows continue from. The repeat is differentiable, so each row's gradient reaches the one
    pass (the model must keep the cache: transformers drops it under gradient checkpointing)."""
    none = torch.empty(0, dtype=torch.long, device=prefix_ids.device)  # no logits: the LM head runs on 0 rows
    cache = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=none).past_key_values
    cache.batch_repeat_interleave(rows)
    return cache


def letter_forward(
    model: Callable[..., Any],
    batch: LetterBatch,
    with_loss: bool,
    prefix_model: Callable[..., Any] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Returns (LM loss on labelled tokens or None, option log-probs (B, K) with -inf for absent options).

    ``prefix_model`` runs a shared prefix (default: ``model``); a model called with per-row arguments
    (an artifact per row) needs one that takes a single row."""
    kwargs = {}
    if batch.prefix_ids is not None:
        rows = batch.input_ids.shape[0]
        kwargs["past_key_values"] = shared_prefix_cache(prefix_model or model, batch.prefix_ids, rows)
        kwargs["position_ids"] = batch.position_ids
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        logits_to_keep=kept_columns(batch.keep, batch.input_ids),
        **kwargs,
    ).logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    answer_logits = logits[rows, batch.score_pos].float()
    scores = answer_logits.log_softmax(-1).gather(1, batch.letter_ids)
    scores = scores.masked_fill(~batch.option_mask, NEG_INF)
    loss = None
    if with_loss:
        tail_labels = batch.labels[:, batch.labels.shape[1] - batch.keep + 1 :]
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), tail_labels.reshape(-1), ignore_index=-100
        )
    return loss, scores


@dataclass
class _Segment:
    """One question's tokens inside a row: its context, then its option spans (row-relative columns)."""

    question: int  # index in the batch
    context: tuple[int, int]  # (start, end)
    options: list[tuple[int, int, int]]  # (option k, start, end)


def _pack_rows(features: list[ClozeFeatures], keys: Sequence[Hashable] | None) -> list[list[int]]:
    """Questions per row, first-fit by decreasing length into rows no wider than the longest question;
    only questions with the same key (the artifact that scores them) share a row."""
    order = sorted(range(len(features)), key=lambda q: -features[q].length)
    capacity = features[order[0]].length
    rows: list[list[int]] = []
    used: list[int] = []
    for q in order:
        for r, row in enumerate(rows):
            same_key = keys is None or keys[row[0]] == keys[q]
            if same_key and used[r] + features[q].length <= capacity:
                row.append(q)
                used[r] += features[q].length
                break
        else:
            rows.append([q])
            used.append(features[q].length)
    return rows


def collate_cloze(
    features: list[ClozeFeatures],
    pad_id: int,
    packed: bool = True,
    pack_questions: bool = False,
    keys: Sequence[Hashable] | None = None,
) -> ClozeBatch:
    """Build one packed row per question, several questions per packed row, or a row per option.

    ``pack_questions`` (packed only): short questions share a row no wider than the batch's longest
    question, each seeing only its own tokens (positions restart per question), so a batch of mixed
    lengths has almost no padding; a row lays out every question's context first and all options
    last, so the logits kept for scoring are the options' tail plus one column per context end.
    ``keys``: one per question; only questions with equal keys share a row (the artifact of each
    model row must be one).
    """
    n_options = max(len(f.option_ids) for f in features)
    # Per row: (question, the options it holds) for each question in it.
    every_option = [list(range(len(f.option_ids))) for f in features]
    if not packed:
        groups = [[(q, [k])] for q, options in enumerate(every_option) for k in options]
    elif pack_questions:
        groups = [[(q, every_option[q]) for q in row] for row in _pack_rows(features, keys)]
    else:
        groups = [[(q, options)] for q, options in enumerate(every_option)]
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    segments: list[list[_Segment]] = []
    for group in groups:
        ids: list[int] = []
        pos: list[int] = []
        row_segments = []
        for q, _ in group:  # every context first
            c = features[q].context_ids
            row_segments.append(_Segment(q, (len(ids), len(ids) + len(c)), []))
            ids += c
            pos += range(len(c))
        for segment, (_, chosen) in zip(row_segments, group, strict=True):  # then the options
            f = features[segment.question]
            c = len(f.context_ids)  # each option's positions continue its own context's
            for k in chosen:
                opt = f.option_ids[k]
                segment.options.append((k, len(ids), len(ids) + len(opt)))
                ids += opt
                pos += range(c, c + len(opt))
        rows.append(ids)
        positions.append(pos)
        segments.append(row_segments)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pad_mask = torch.zeros((len(rows), width), dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        offset = width - len(ids)
        input_ids[r, offset:] = torch.tensor(ids)
        pad_mask[r, offset:] = 1
        position_ids[r, offset:] = torch.tensor(positions[r])

    # (row, column predicting it, token, slot) for every option token; columns are absolute.
    targets: list[tuple[int, int, int, int]] = []
    for r, ids in enumerate(rows):
        offset = width - len(ids)
        for segment in segments[r]:
            context_end = segment.context[1]
            for k, start, end in segment.options:
                for j in range(start, end):
                    predictor = context_end - 1 if j == start else j - 1
                    targets.append((r, offset + predictor, ids[j], segment.question * n_options + k))
    if all(len(row_segments) == 1 for row_segments in segments):  # a tail from the first context end
        first = min(
            width - len(ids) + row_segments[0].context[1] - 1
            for ids, row_segments in zip(rows, segments, strict=True)
        )
        keep: int | torch.Tensor = width - first
        kept_index = {column: column - first for column in range(first, width)}
    else:  # several questions per row: only the columns that predict an option token
        columns = sorted({column for _, column, _, _ in targets})
        keep = torch.tensor(columns)
        kept_index = {column: i for i, column in enumerate(columns)}

    attention = _packed_attention_mask(width, [len(r) for r in rows], segments) if packed else pad_mask
    option_mask = torch.zeros((len(features), n_options), dtype=torch.bool)
    for q, f in enumerate(features):
        option_mask[q, : len(f.option_ids)] = True
    return ClozeBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids if packed else None,
        keep=keep,
        target_row=torch.tensor([t[0] for t in targets]),
        target_pos=torch.tensor([kept_index[t[1]] for t in targets]),
        target_token=torch.tensor([t[2] for t in targets]),
        target_slot=torch.tensor([t[3] for t in targets]),
        option_mask=option_mask,
        answers=_answers(features),
        indices=[f.index for f in features],
        row_question=[group[0][0] for group in groups],
        real_tokens=int(pad_mask.sum()),
    )


def _packed_attention_mask(width: int, lengths: list[int], segments: list[list[_Segment]]) -> torch.Tensor:
    """Bool (R, 1, T, T): each context causal over itself; each option sees its context and itself only.

    Padding queries attend to themselves so no softmax row is empty (an empty row gives NaN).
    """
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    mask = torch.zeros((len(lengths), 1, width, width), dtype=torch.bool)
    for r, n in enumerate(lengths):
        offset = width - n
        m = mask[r, 0]
        for segment in segments[r]:
            cs, ce = offset + segment.context[0], offset + segment.context[1]
            m[cs:ce, cs:ce] = causal[cs:ce, cs:ce]
            for _, start, end in segment.options:
                s, e = offset + start, offset + end
                m[s:e, cs:ce] = True
                m[s:e, s:e] = causal[s:e, s:e]
        m.fill_diagonal_(True)
    return mask


def cloze_forward(model: torch.nn.Module, batch: ClozeBatch, normalize: bool = True) -> torch.Tensor:
    """Option scores (B, K): mean (or summed) token log-probability; -inf for absent options."""
    kwargs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "logits_to_keep": kept_columns(batch.keep, batch.input_ids),
    }
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    logits = model(**kwargs).logits
    picked = logits[batch.target_row, batch.target_pos].float().log_softmax(-1)
    token_logp = picked.gather(1, batch.target_token[:, None]).squeeze(1)
    n_slots = batch.option_mask.numel()
    sums = torch.zeros(n_slots, device=logits.device, dtype=token_logp.dtype).index_add(
        0, batch.target_slot, token_logp
    )
    scores = sums
    if normalize:
        counts = torch.zeros(n_slots, device=logits.device).index_add(
            0, batch.target_slot, torch.ones_like(token_logp)
        )
        scores = sums / counts.clamp(min=1)
    scores = scores.view(batch.option_mask.shape)
    return scores.masked_fill(~batch.option_mask, NEG_INF)


def ranking_loss(scores: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over option scores: pushes the gold option's likelihood above the others'."""
    return F.cross_entropy(scores, answers)
