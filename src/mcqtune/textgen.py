"""Plain language-model work on any attached artifact: the log-probability of every prompt token and
greedy generation, each token with its log-probability and the top-k alternatives.

This is what the OpenAI-compatible endpoints (``/v1/completions``, ``/v1/chat/completions``) need and
what multiple-choice scoring does not: a client such as lm-evaluation-harness scores its own prompts
token by token. Both functions take the module :meth:`mcqtune.inference.Predictor.module` made active,
so every method's artifact (peft, AdapterHub, subset, full) computes through its own forward pass;
generation goes through ``generate()`` so each method's own handling of caches and prefixes applies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from mcqtune.evaluation.evaluate import autocast_context

PROMPT_TOKEN_BUDGET = 4096  # prompt tokens per forward pass when every position's logits are kept


@dataclass(frozen=True)
class TokenLogprob:
    """One token, its log-probability under the model, and the ``top_k`` most likely tokens there."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, log-probability), most likely first


@dataclass
class Generated:
    tokens: list[TokenLogprob]
    finish_reason: str  # "stop" (an end token or a stop string) or "length" (max_new_tokens reached)


def _token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top_k: int) -> list[TokenLogprob]:
    """Per row of ``logits`` (N, V): the chosen token's log-probability and the top ``top_k``."""
    logprobs = logits.float().log_softmax(-1)
    picked = logprobs.gather(1, chosen[:, None]).squeeze(1).tolist()
    if top_k > 0:
        values, indices = logprobs.topk(top_k, dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    else:
        tops = [()] * len(picked)
    return [
        TokenLogprob(int(t), float(p), top) for t, p, top in zip(chosen.tolist(), picked, tops, strict=True)
    ]


def context_length(model: torch.nn.Module) -> int:
    """The longest sequence the base model takes (its position embeddings)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


@torch.no_grad()
def prompt_logprobs(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    top_k: int,
    *,
    precision: str,
    device: torch.device,
    pad_id: int,
) -> list[tuple[list[TokenLogprob | None], TokenLogprob]]:
    """For each row: every prompt token's log-probability given the tokens before it (the first: None,
    nothing predicts it), and the greedy next token after the prompt (what ``greedy`` would generate
    first, so one forward pass answers a one-token completion). Rows are right-padded into forward passes
    of at most :data:`PROMPT_TOKEN_BUDGET` tokens (right padding leaves every real position as it is)."""
    autocast = autocast_context(device, precision)
    results: list = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    start = 0
    while start < len(order):
        width = len(rows[order[start]])
        group = order[start : start + max(1, PROMPT_TOKEN_BUDGET // max(width, 1))]
        start += len(group)
        input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(group), width), dtype=torch.long)
        for i, r in enumerate(group):
            input_ids[i, : len(rows[r])] = torch.tensor(list(rows[r]), dtype=torch.long)
            attention[i, : len(rows[r])] = 1
        with autocast():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for i, r in enumerate(group):
            n = len(rows[r])
            row_logits = logits[i, :n]
            chosen = torch.cat([input_ids[i, 1:n].to(logits.device), row_logits[-1:].argmax(-1)])
            *prompt, following = _token_logprobs(row_logits, chosen, top_k)
            results[r] = ([None, *prompt], following)
        del logits
    return results


class _Steps(LogitsProcessor):
    """Records each generated token (greedy: the argmax of the raw scores it is handed) and tells
    ``on_token`` at once, so a streaming client gets it before the next forward pass."""

    def __init__(self, top_k: int, on_token: Callable[[TokenLogprob], None]) -> None:
        self.top_k = top_k
        self.on_token = on_token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = scores.argmax(-1)
        self.on_token(_token_logprobs(scores[:1], chosen[:1], self.top_k)[0])
        return scores


class _Stop(StoppingCriteria):
    """Stop at a stop string in the decoded continuation, or when the client has gone away."""

    def __init__(self, tokenizer, prompt_length: int, stop: Sequence[str], cancelled: Callable[[], bool]):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = list(stop)
        self.cancelled = cancelled
        self.hit = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = self.cancelled()
        if self.stop and not done:
            text = self.tokenizer.decode(input_ids[0, self.prompt_length :], skip_special_tokens=True)
            self.hit = any(s in text for s in self.stop)
            done = self.hit
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def end_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """Tokens that end a generation: the model's generation config's and the tokenizer's end tokens."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


@torch.no_grad()
def greedy(
    model: torch.nn.Module,
    tokenizer,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    precision: str,
    device: torch.device,
    top_k: int = 0,
    stop: Sequence[str] = (),
    end_ids: set[int] | None = None,
    on_token: Callable[[TokenLogprob], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Generated:
    """Greedy decoding of up to ``max_new_tokens`` after ``prompt`` (one sequence, no padding). An end
    token is kept as the last token (its log-probability is reported) and ends with "stop"; a stop string
    ends it with "stop" too (the caller cuts the text there)."""
    tokens: list[TokenLogprob] = []

    def record(token: TokenLogprob) -> None:
        tokens.append(token)
        if on_token is not None:
            on_token(token)

    end_ids = end_ids if end_ids is not None else end_token_ids(model, tokenizer)
    stopper = _Stop(tokenizer, len(prompt), stop, cancelled)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(end_ids) or None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids or {0}),
    )
    input_ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    with autocast_context(device, precision)():
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            logits_processor=LogitsProcessorList([_Steps(top_k, record)]),
            stopping_criteria=[stopper],
        )
    ended = bool(tokens) and tokens[-1].token_id in end_ids
    reason = "stop" if ended or stopper.hit else "length"
    return Generated(tokens, reason)
