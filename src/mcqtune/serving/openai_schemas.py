"""Request bodies of the OpenAI-compatible endpoints (docs/SERVING.md, "OpenAI API").

Every field a client may send is declared: a supported one is used, an unsupported *value* (``n`` > 1,
``temperature`` > 0, ``best_of`` > 1, ``top_p`` < 1, penalties, ``logit_bias``, ``suffix``) is a 400
naming the field, and an undeclared field is a 400 too (``extra="forbid"``): nothing is silently
ignored. ``seed`` and ``user`` are accepted: greedy decoding gives the same answer for every seed, and
``user`` is the client's own label.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_LOGPROBS = 20  # top alternatives per token (vLLM's default limit; OpenAI's completions allow 5)
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions' max_tokens when none is given (OpenAI, vLLM)

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _only(value: Any, allowed: Any, field: str, why: str) -> Any:
    if value is not None and value != allowed:
        raise ValueError(f"{field}={value!r} is not supported: {why}")
    return value


class _Sampling(BaseModel):
    """Fields both endpoints share; only greedy decoding of one choice is implemented."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="an artifact name from GET /v1/models, or the base model's id")
    temperature: float | None = Field(default=None, ge=0, description="0 (greedy) or omitted")
    top_p: float | None = Field(default=None, description="1 or omitted")
    n: int | None = Field(default=None, description="1 or omitted")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(default=None, description=f"up to {MAX_STOP} stop strings")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, description="accepted; greedy decoding does not depend on it")
    user: str | None = None

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, value: float | None) -> float | None:
        return _only(value, 0, "temperature", "only greedy decoding (temperature 0) is implemented")

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float | None) -> float | None:
        return _only(value, 1, "top_p", "only greedy decoding is implemented (top_p 1)")

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None) -> int | None:
        return _only(value, 1, "n", "one choice per prompt (greedy decoding gives the same one n times)")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, value: float | None, info) -> float | None:
        return _only(value, 0, info.field_name, "penalties are not implemented")

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict | None) -> dict | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop string is empty")
        return value

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a prompt as text or token ids, one or a batch."""

    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists"
    )
    max_tokens: int | None = Field(
        default=DEFAULT_COMPLETION_TOKENS,
        ge=0,
        description="0 only with echo (the prompt's log-probs); null: up to the context length",
    )
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None) -> int | None:
        return _only(value, 1, "best_of", "one choice per prompt")

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        if isinstance(value, str) and not value:
            raise ValueError("the prompt is empty")
        if isinstance(value, list) and any(isinstance(p, str) and not p for p in value):
            raise ValueError("a prompt in the list is empty")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text, or its token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]  # one token-id prompt
        return list(self.prompt)  # type: ignore[arg-type]  # texts or token-id lists


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: messages rendered by the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="omitted: up to the context length")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="the newer name of max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


_Sampling.model_rebuild()
CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
