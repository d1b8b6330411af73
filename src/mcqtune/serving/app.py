"""The FastAPI app of ``mcqtune serve``: answer endpoints over the dynamic batcher, the artifact list,
health, Prometheus metrics and the static web page.

Every error answer is ``{"error": "..."}`` with a 4xx status that says what was wrong; nothing a
request sends can stop the server.
"""

from __future__ import annotations

import base64
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from mcqtune import __version__
from mcqtune.data import BUNDLED_DATASETS, LETTERS, MCQExample, bundled_path, load_examples
from mcqtune.errors import ArtifactError, RequestError
from mcqtune.evaluation.debias import LetterPrior, debias_scores
from mcqtune.evaluation.temperature import option_probabilities
from mcqtune.serving import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_WINDOW_MS, schemas
from mcqtune.serving.batching import Answer, DynamicBatcher
from mcqtune.serving.openai_api import error_body, is_openai_path, openai_router, validation_error
from mcqtune.serving.registry import ArtifactRegistry

STATIC_DIR = Path(__file__).parent / "static"
OPEN_PATHS = ("/healthz",)  # answered without an API key
ZERO_SHOT = "zero-shot"  # the name --prior uses for the base model without an artifact


@dataclass
class ServeSettings:
    window_ms: float = DEFAULT_WINDOW_MS
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_key: str | None = None
    priors: dict[str, LetterPrior] = field(default_factory=dict)  # artifact name (or ZERO_SHOT) -> prior


class Metrics:
    """Prometheus series of one app (its own registry, so several apps in one process do not clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mcqtune_requests", "HTTP requests", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mcqtune_request_latency_seconds",
            "HTTP request latency",
            ["path"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mcqtune_batch_size",
            "questions per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, path: str = "", **openai: str | None
) -> JSONResponse:
    """``{"error": message}``; on the OpenAI endpoints OpenAI's ``{"error": {"message", "type", "param",
    "code"}}`` (``openai``: its param and code), which their clients parse."""
    body = error_body(status, message, **openai) if is_openai_path(path) else {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """pydantic's error list as one line: ``choices: List should have at most 10 items; ...``."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        if error.get("type") == "json_invalid":
            parts.append(f"invalid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
        else:
            parts.append(f"{location or 'body'}: {error['msg']}")
    return "; ".join(parts)


def _supplied_key(request: Request) -> str | None:
    """``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or HTTP Basic with KEY as the password (what a
    browser sends after its login prompt, so the page works behind a key)."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused with 413 whether or not it says its length."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body is over the {self.limit} byte limit"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, too_large, path=scope["path"])(scope, receive, send)
            return
        # Read the whole body here (it is small by definition) and hand the app a replay of it.
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.limit:
                await _error(413, too_large, path=scope["path"])(scope, receive, send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@cache
def bundled_examples(dataset: str) -> list[MCQExample]:
    return load_examples(bundled_path(dataset, "validation")).examples


def _answer_response(request: schemas.AnswerRequest, answer: Answer, prior, start: float):
    scores = answer.scores
    if request.debias:
        scores = debias_scores(scores[None, :], [len(scores)], prior)[0][0]
    probabilities, kind = option_probabilities(scores, answer.temperature, request.debias)
    index = int(probabilities.argmax())
    return schemas.AnswerResponse(
        letter=LETTERS[index],
        index=index,
        probabilities=[float(p) for p in probabilities],
        probability_kind=kind,
        adapter=request.adapter,
        scoring=answer.scoring,
        debiased=request.debias,
        batch_size=answer.batch_size,
        latency_ms=round((time.perf_counter() - start) * 1000, 2),
    )


def create_app(registry: ArtifactRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The app over an engine whose named artifacts are already loaded (``registry.load_named``)."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    batcher = DynamicBatcher(
        registry,
        window_ms=settings.window_ms,
        max_batch=settings.max_batch,
        on_batch=metrics.batch_size.observe,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="mcqtune serve",
        version=__version__,
        description="Multiple-choice answers from one base model and many trained artifacts.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.registry = registry

    @app.middleware("http")
    async def check_key_and_count(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path
        if settings.api_key is not None and path not in OPEN_PATHS:
            supplied = _supplied_key(request)
            if supplied is None or not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
                response = _error(
                    401,
                    "missing API key" if supplied is None else "wrong API key",
                    {"WWW-Authenticate": 'Basic realm="mcqtune", charset="UTF-8"'},
                    path,
                    code="invalid_api_key",
                )
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        label = getattr(route, "path", None) or ("/static" if path.startswith("/static/") else "other")
        metrics.requests.labels(label, str(response.status_code)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - start)
        return response

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        if is_openai_path(request.url.path):  # OpenAI answers a bad parameter with 400
            message, param, code = validation_error(list(exc.errors()))
            return _error(400, message, path=request.url.path, param=param, code=code)
        return _error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), path=request.url.path)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        openai = {"param": getattr(exc, "param", None), "code": getattr(exc, "code", None)}
        return _error(exc.status, str(exc), path=request.url.path, **openai)

    @app.exception_handler(ArtifactError)
    async def artifact_error(request: Request, exc: ArtifactError):
        return _error(422, str(exc), path=request.url.path)

    def _prior(request: schemas.AnswerRequest) -> LetterPrior | None:
        registry.check_name(request.adapter)
        if not request.debias:
            return None
        key = request.adapter or ZERO_SHOT
        if key not in settings.priors:
            raise RequestError(
                f"debias: no letter prior for '{key}'; start the server with --prior {key}=FILE "
                "(a prior saved by `mcqtune eval --debias --save-prior FILE`)"
            )
        return settings.priors[key]

    async def _answer_all(requests: list[schemas.AnswerRequest]) -> list[schemas.AnswerResponse]:
        start = time.perf_counter()
        priors = [_prior(r) for r in requests]
        examples = [
            MCQExample(f"request-{i}", r.question, tuple(r.choices), None) for i, r in enumerate(requests)
        ]
        answers = await batcher.submit(examples, [r.adapter for r in requests])
        return [_answer_response(r, a, p, start) for r, a, p in zip(requests, answers, priors, strict=True)]

    errors = {status: {"model": schemas.ErrorResponse} for status in (400, 401, 404, 413, 422)}

    @app.post("/v1/answer", response_model=schemas.AnswerResponse, responses=errors)
    async def answer(body: schemas.AnswerRequest) -> schemas.AnswerResponse:
        """Answer one question with the named artifact (or the base zero-shot)."""
        return (await _answer_all([body]))[0]

    @app.post("/v1/answer/batch", response_model=schemas.BatchResponse, responses=errors)
    async def answer_batch(body: schemas.BatchRequest) -> schemas.BatchResponse:
        """Answer several questions, each with its own artifact; they share forward passes."""
        return schemas.BatchResponse(answers=await _answer_all(body.questions))

    @app.get("/v1/adapters", response_model=schemas.AdaptersResponse)
    async def adapters() -> schemas.AdaptersResponse:
        """The base zero-shot and every loaded artifact, and the names that can be requested."""
        return schemas.AdaptersResponse(
            base=registry.engine.base_id,
            loaded=[schemas.AdapterInfo(**info.to_dict()) for info in registry.loaded()],
            available=registry.available(),
            max_loaded=registry.max_loaded if registry.adapter_dir is not None else None,
        )

    @app.get("/v1/examples", response_model=list[schemas.Example])
    async def examples(
        dataset: str = Query(BUNDLED_DATASETS[0], description=f"one of {', '.join(BUNDLED_DATASETS)}"),
        limit: int = Query(50, ge=1, le=500),
    ) -> list[schemas.Example]:
        """Questions from a bundled validation set, for the web page's example picker."""
        if dataset not in BUNDLED_DATASETS:
            raise RequestError(f"unknown dataset '{dataset}'; bundled: {', '.join(BUNDLED_DATASETS)}")
        return [
            schemas.Example(id=e.id, question=e.question, choices=list(e.choices), answer=e.answer)
            for e in bundled_examples(dataset)[:limit]
        ]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.include_router(openai_router(registry, batcher))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
