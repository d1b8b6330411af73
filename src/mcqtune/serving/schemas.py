"""Request and response bodies of the HTTP API (pydantic validates them; OpenAPI is built from them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mcqtune.data import MAX_OPTIONS, MIN_OPTIONS
from mcqtune.evaluation.temperature import CALIBRATED, UNCALIBRATED

MAX_TEXT_CHARS = 4000  # one question or option; the body size limit bounds the whole request
MAX_BATCH_QUESTIONS = 64

NonEmptyText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)
]


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: NonEmptyText
    choices: list[NonEmptyText] = Field(min_length=MIN_OPTIONS, max_length=MAX_OPTIONS)
    adapter: str | None = Field(
        default=None, description="artifact name; omitted or null: the base zero-shot"
    )
    debias: bool = Field(default=False, description="remove the artifact's saved letter prior (--prior)")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: list[AnswerRequest] = Field(min_length=1, max_length=MAX_BATCH_QUESTIONS)


class AnswerResponse(BaseModel):
    letter: str
    index: int
    probabilities: list[float]
    probability_kind: Literal[CALIBRATED, UNCALIBRATED] = Field(  # type: ignore[valid-type]
        description="calibrated: the artifact's temperature (fitted on its validation split) applied; "
        "uncalibrated score: a softmax over option scores (zero-shot, an artifact trained before "
        "calibration, or debiased scores)"
    )
    adapter: str | None
    scoring: str
    debiased: bool
    batch_size: int = Field(description="questions scored in the same forward pass")
    latency_ms: float


class BatchResponse(BaseModel):
    answers: list[AnswerResponse]


class AdapterInfo(BaseModel):
    name: str | None
    method: str
    formulation: str
    trainable_parameters: int
    base: str
    validation_accuracy: float | None
    artifact_bytes: int


class AdaptersResponse(BaseModel):
    base: str
    loaded: list[AdapterInfo]
    available: list[str] = Field(description="names that can be requested (loaded lazily if needed)")
    max_loaded: int | None


class Example(BaseModel):
    id: str
    question: str
    choices: list[str]
    answer: int | None


class ErrorResponse(BaseModel):
    error: str
