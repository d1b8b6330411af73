"""OpenAI-compatible endpoints beside ``/v1/answer``: ``GET /v1/models``, ``POST /v1/completions``
(as vLLM implements it: text or token-id prompts, one or a batch, ``echo`` with the prompt's own token
log-probabilities, ``logprobs`` top-k) and ``POST /v1/chat/completions`` (the tokenizer's chat
template, with server-sent-event streaming), so lm-evaluation-harness's ``local-completions`` model,
the OpenAI SDK and anything built on them work against every artifact.

A request's ``model`` names an artifact (or the base model's id, for the base zero-shot). The work
runs on the batcher's single model thread through the inference layer
(:meth:`mcqtune.inference.Predictor.prompt_logprobs` / :meth:`~mcqtune.inference.Predictor.generate`),
so it never overlaps multiple-choice scoring and lazily loaded artifacts load as for ``/v1/answer``.
Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (:func:`error_body`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from mcqtune.errors import RequestError, UnknownArtifactError
from mcqtune.inference import Predictor
from mcqtune.serving.batching import DynamicBatcher
from mcqtune.serving.openai_schemas import ChatCompletionRequest, CompletionRequest
from mcqtune.serving.registry import ArtifactRegistry
from mcqtune.textgen import Generated, TokenLogprob

PATH_PREFIXES = ("/v1/models", "/v1/completions", "/v1/chat/")  # answered with OpenAI-style errors
OWNER = "mcqtune"


class OpenAIError(RequestError):
    """A bad request to an OpenAI endpoint: its status, the field it is about and a machine code."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


def is_openai_path(path: str) -> bool:
    return path.startswith(PATH_PREFIXES)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "invalid_request_error"}.get(status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_error(errors: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """pydantic's errors as (message, the first field's name, a code) for :func:`error_body`."""
    parts, params = [], []
    for error in errors:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        if error.get("type") == "json_invalid":
            parts.append(f"invalid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown or unsupported field (see docs/SERVING.md, OpenAI API)"
        parts.append(f"{location or 'body'}: {message}")
        params.append(location or None)
    unsupported = any(e.get("type") in ("extra_forbidden", "value_error") for e in errors)
    return (
        "; ".join(parts),
        (params[0] if params else None),
        ("unsupported_parameter" if unsupported else None),
    )


@dataclass
class _Prompt:
    ids: list[int]
    text: str  # what echo returns: the prompt as sent, or its token ids decoded


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIEndpoints:
    """The three endpoints over one registry and its batcher (one model thread)."""

    def __init__(self, registry: ArtifactRegistry, batcher: DynamicBatcher) -> None:
        self.registry = registry
        self.batcher = batcher
        self.created = int(time.time())

    @property
    def predictor(self) -> Predictor:
        return self.registry.engine.predictor

    @property
    def base_name(self) -> str:
        return self.registry.engine.base_id

    # -------------------------------------------------------------------------------- models

    def adapter_for(self, model: str) -> str | None:
        """The artifact a request's ``model`` names (None: the base), or a 404 in OpenAI's shape."""
        if model == self.base_name:
            return None
        try:
            self.registry.check_name(model)
        except UnknownArtifactError:
            names = ", ".join([self.base_name, *self.registry.available()])
            raise OpenAIError(
                f"The model '{model}' does not exist; available: {names}", 404, "model", "model_not_found"
            ) from None
        return model

    def models(self) -> dict[str, Any]:
        context = self.predictor.context_length()
        entries = [{"id": self.base_name, "root": self.base_name, "parent": None}]
        entries += [
            {"id": name, "root": name, "parent": self.base_name} for name in self.registry.available()
        ]
        return {
            "object": "list",
            "data": [
                {**e, "object": "model", "created": self.created, "owned_by": OWNER, "max_model_len": context}
                for e in entries
            ],
        }

    # -------------------------------------------------------------------------------- helpers

    def _check_length(self, prompt: _Prompt, max_tokens: int, param: str) -> None:
        context = self.predictor.context_length()
        if len(prompt.ids) + max_tokens > context:
            raise OpenAIError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{len(prompt.ids) + max_tokens} tokens ({len(prompt.ids)} in the prompt, {max_tokens} "
                "in the completion). Please reduce the length of the prompt or completion.",
                400,
                param,
                "context_length_exceeded",
            )

    def _encode(self, prompts: list[str | list[int]]) -> list[_Prompt]:
        """Tokenize text prompts (with the tokenizer's special tokens, as vLLM does); check token ids."""
        tokenizer = self.predictor.tokenizer
        vocabulary = len(tokenizer)
        encoded = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                ids = tokenizer(prompt).input_ids
                text = prompt
            else:
                ids = list(prompt)
                bad = [t for t in ids if t >= vocabulary]
                if bad:
                    raise OpenAIError(
                        f"prompt {index}: token id {bad[0]} is outside the vocabulary (size {vocabulary})",
                        param="prompt",
                    )
                text = tokenizer.decode(ids)
            if not ids:
                raise OpenAIError(f"prompt {index} has no tokens", param="prompt")
            encoded.append(_Prompt(ids, text))
        return encoded

    def _token_text(self, token_id: int) -> str:
        return self.predictor.tokenizer.decode([token_id])

    def _top(self, token: TokenLogprob | None) -> dict[str, float] | None:
        """vLLM's top_logprobs entry: the top-k alternatives and the token itself."""
        if token is None:
            return None
        top = {self._token_text(i): p for i, p in token.top}
        top.setdefault(self._token_text(token.token_id), token.logprob)
        return top

    def _completion_text(self, generated: Generated, stops: list[str]) -> str:
        ids = [t.token_id for t in generated.tokens]
        text = self.predictor.tokenizer.decode(ids, skip_special_tokens=True)
        return _cut_at_stop(text, stops)

    # -------------------------------------------------------------------------------- completions

    def _run_completions(self, request: CompletionRequest, adapter: str | None) -> list[dict[str, Any]]:
        """Worker thread: every prompt's choice (text, log-probs, finish reason, token counts)."""
        prompts = self._encode(request.prompts)
        max_tokens = request.max_tokens
        if max_tokens is None:  # an explicit null: up to the context length (vLLM)
            max_tokens = max(self.predictor.context_length() - max(len(p.ids) for p in prompts), 1)
        if max_tokens == 0 and not request.echo:
            raise OpenAIError("max_tokens=0 needs echo=true (it returns only the prompt)", param="max_tokens")
        for prompt in prompts:
            self._check_length(prompt, max_tokens, "prompt")
        top_k = request.logprobs or 0
        echoed = None
        if request.echo and request.logprobs is not None:
            echoed = self.predictor.prompt_logprobs(adapter, [p.ids for p in prompts], top_k)
        ends = self.predictor.end_token_ids()
        choices = []
        for index, prompt in enumerate(prompts):
            generated = Generated([], "length")
            if max_tokens == 1 and echoed is not None:  # the prompt's pass already chose it (lm-eval)
                following = echoed[index][1]
                generated = Generated([following], "stop" if following.token_id in ends else "length")
            elif max_tokens:
                generated = self.predictor.generate(
                    adapter, prompt.ids, max_tokens, top_k=top_k, stop=request.stops
                )
            text = self._completion_text(generated, request.stops)
            tokens: list[TokenLogprob | None] = list(generated.tokens)
            ids = [t.token_id for t in generated.tokens]
            if request.echo:
                text = prompt.text + text
                ids = [*prompt.ids, *ids]
                tokens = [*(echoed[index][0] if echoed is not None else []), *tokens]
            logprobs = self._completion_logprobs(ids, tokens) if request.logprobs is not None else None
            choice = {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": generated.finish_reason,
            }
            choices.append({**choice, "_usage": (len(prompt.ids), len(generated.tokens))})
        return choices

    def _completion_logprobs(self, ids: list[int], tokens: list[TokenLogprob | None]) -> dict[str, Any]:
        """OpenAI's completions ``logprobs`` object for tokens ``ids`` (echoed prompt, then generated)."""
        strings = [self._token_text(i) for i in ids]
        offsets, position = [], 0
        for string in strings:
            offsets.append(position)
            position += len(string)
        return {
            "tokens": strings,
            "token_logprobs": [None if t is None else t.logprob for t in tokens],
            "top_logprobs": [self._top(t) for t in tokens],
            "text_offset": offsets,
        }

    async def completions(self, request: CompletionRequest):
        adapter = self.adapter_for(request.model)
        if request.stream:
            return self._stream_completion(request, adapter)
        choices = await self.batcher.run(adapter, lambda: self._run_completions(request, adapter))
        prompt_tokens = sum(c["_usage"][0] for c in choices)
        completion_tokens = sum(c.pop("_usage")[1] for c in choices)
        return {
            "id": _new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    # -------------------------------------------------------------------------------- chat

    def _chat_prompt(self, request: ChatCompletionRequest) -> tuple[_Prompt, set[int]]:
        """Worker thread: the messages through the chat template, and the tokens that end the turn
        (the model's end tokens and the template's special tokens, e.g. ChatML's ``<|im_end|>``)."""
        tokenizer = self.predictor.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise OpenAIError(
                "the model's tokenizer has no chat template; use /v1/completions", param="messages"
            )
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template's own check (e.g. roles must alternate)
            raise OpenAIError(f"the chat template refused the messages: {exc}", param="messages") from None
        ids = tokenizer(text, add_special_tokens=False).input_ids
        special = set(tokenizer.all_special_ids) | {
            i for i, t in tokenizer.added_tokens_decoder.items() if t.special
        }
        ends = self.predictor.end_token_ids() | (special & set(ids))
        return _Prompt(ids, text), ends

    def _chat_limit(self, request: ChatCompletionRequest, prompt: _Prompt) -> int:
        limit = request.token_limit
        if limit is None:
            limit = max(self.predictor.context_length() - len(prompt.ids), 0)
            if limit == 0:
                self._check_length(prompt, 1, "messages")
        self._check_length(prompt, limit, "messages")
        return limit

    def _run_chat(self, request: ChatCompletionRequest, adapter: str | None, **stream: Any) -> tuple:
        prompt, ends = self._chat_prompt(request)
        limit = self._chat_limit(request, prompt)
        generated = self.predictor.generate(
            adapter,
            prompt.ids,
            limit,
            top_k=request.top_logprobs or 0,
            stop=request.stops,
            end_ids=ends,
            **stream,
        )
        return prompt, generated, self._completion_text(generated, request.stops)

    def _chat_token(self, token: TokenLogprob, request: ChatCompletionRequest) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self._token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            **entry(token.token_id, token.logprob),
            "top_logprobs": [entry(i, p) for i, p in token.top[: request.top_logprobs or 0]],
        }

    async def chat(self, request: ChatCompletionRequest):
        adapter = self.adapter_for(request.model)
        if request.stream:
            return self._stream_chat(request, adapter)
        prompt, generated, text = await self.batcher.run(adapter, lambda: self._run_chat(request, adapter))
        logprobs = None
        if request.logprobs:
            logprobs = {"content": [self._chat_token(t, request) for t in generated.tokens]}
        return {
            "id": _new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": generated.finish_reason,
                }
            ],
            "usage": _usage(len(prompt.ids), len(generated.tokens)),
        }

    # -------------------------------------------------------------------------------- streaming

    async def _generation_events(
        self, adapter: str | None, run: Callable[..., tuple]
    ) -> AsyncIterator[TokenLogprob | tuple]:
        """Each token as the model thread produces it, then the finished run's result; the
        generation stops early when the client goes away (the iterator is closed)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        finished = object()

        def on_token(token: TokenLogprob) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, token)

        job = asyncio.ensure_future(
            self.batcher.run(adapter, lambda: run(on_token=on_token, cancelled=cancelled.is_set))
        )
        job.add_done_callback(lambda _: queue.put_nowait(finished))
        try:
            while (item := await queue.get()) is not finished:
                yield item
            yield job.result()
        finally:
            cancelled.set()

    def _stream_completion(self, request: CompletionRequest, adapter: str | None):
        if len(request.prompts) != 1:
            raise OpenAIError("stream=true takes one prompt", param="stream")
        if request.echo:
            raise OpenAIError("echo is not supported with stream=true", param="echo")
        response_id, created = _new_id("cmpl"), int(time.time())

        def chunk(text: str, finish: str | None, token: TokenLogprob | None = None) -> dict[str, Any]:
            logprobs = None
            if token is not None and request.logprobs is not None:
                logprobs = {
                    "tokens": [self._token_text(token.token_id)],
                    "token_logprobs": [token.logprob],
                    "top_logprobs": [self._top(token)],
                    "text_offset": [0],
                }
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
            return {
                "id": response_id,
                "object": "text_completion",
                "created": created,
                "model": request.model,
                "choices": [choice],
            }

        def check() -> _Prompt:
            if not request.max_tokens:
                raise OpenAIError("max_tokens must be at least 1 with stream=true", param="max_tokens")
            (prompt,) = self._encode(request.prompts)
            self._check_length(prompt, request.max_tokens, "prompt")
            return prompt

        def run(**stream: Any) -> tuple:
            prompt = check()
            generated = self.predictor.generate(
                adapter,
                prompt.ids,
                request.max_tokens,
                top_k=request.logprobs or 0,
                stop=request.stops,
                **stream,
            )
            return prompt, generated, self._completion_text(generated, request.stops)

        return self._sse(adapter, check, run, request.stops, chunk, request.stream_options)

    def _stream_chat(self, request: ChatCompletionRequest, adapter: str | None):
        response_id, created = _new_id("chatcmpl"), int(time.time())

        def chunk(text: str, finish: str | None, token: TokenLogprob | None = None, role: bool = False):
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            logprobs = None
            if token is not None and request.logprobs:
                logprobs = {"content": [self._chat_token(token, request)]}
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.model,
                "choices": [choice],
            }

        def check() -> None:
            prompt, _ = self._chat_prompt(request)
            self._chat_limit(request, prompt)

        return self._sse(
            adapter,
            check,
            lambda **s: self._run_chat(request, adapter, **s),
            request.stops,
            chunk,
            request.stream_options,
            role=True,
        )

    def _sse(self, adapter, check, run, stops, chunk, options, role: bool = False):
        async def events() -> AsyncIterator[str]:
            tokenizer = self.predictor.tokenizer
            if role:
                yield _event(chunk("", None, role=True))
            ids: list[int] = []
            sent = ""
            hold = max((len(s) for s in stops), default=1) - 1  # a stop string may be starting here
            try:
                async for item in self._generation_events(adapter, run):
                    if isinstance(item, TokenLogprob):
                        ids.append(item.token_id)
                        text = _cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stops)
                        ready = text[: len(text) - hold].removesuffix("\ufffd")  # wait for a whole character
                        delta = ""
                        if len(ready) > len(sent) and ready.startswith(sent):
                            delta, sent = ready[len(sent) :], ready
                        yield _event(chunk(delta, None, item))
                        continue
                    prompt, generated, text = item
                    yield _event(
                        chunk(text[len(sent) :] if text.startswith(sent) else "", generated.finish_reason)
                    )
                    if options is not None and options.include_usage:
                        usage = _usage(len(prompt.ids), len(generated.tokens))
                        yield _event({**chunk("", None), "choices": [], "usage": usage})
            except RequestError as exc:  # after the 200: the error goes in the stream, as vLLM does
                yield _event(error_body(exc.status, str(exc), getattr(exc, "param", None)))
            yield "data: [DONE]\n\n"

        async def start() -> StreamingResponse:
            await self.batcher.run(adapter, check)  # errors answered with a status, before the 200
            return StreamingResponse(events(), media_type="text/event-stream")

        return start()


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _cut_at_stop(text: str, stops: list[str]) -> str:
    """The text up to the first stop string (which is not returned, as in OpenAI's API)."""
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


def openai_router(registry: ArtifactRegistry, batcher: DynamicBatcher) -> APIRouter:
    endpoints = OpenAIEndpoints(registry, batcher)
    router = APIRouter(tags=["OpenAI-compatible"])

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The base model and every artifact a request's ``model`` can name."""
        return endpoints.models()

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest):
        """Text completion as vLLM implements it (greedy; echo and logprobs for scoring prompts)."""
        result = await endpoints.completions(body)
        return await result if asyncio.iscoroutine(result) else JSONResponse(result)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        """Chat completion through the tokenizer's chat template (greedy), streamed with stream=true."""
        result = await endpoints.chat(body)
        return await result if asyncio.iscoroutine(result) else JSONResponse(result)

    return router
