"""The model server's HTTP app: `POST /internal/generate` (the API's proxy target and the graders' judges),
`POST /internal/embeddings` (the graders' cosine similarity), base-model archives, `GET /health`. It trusts
the API's model resolution, so every route but `/health` answers only holders of the shared secret
(inference.auth), and it applies the API's own request limits again (jobspec.serving).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from core.settings import Settings
from inference.archive import base_model_archive
from inference.auth import SecretRequired, server_secret
from inference.backend import Backend, TransformersBackend, make_backend
from inference.batcher import Busy, Delta, Done, Event, Failed, Finished
from inference.embeddings import Embedder, EmbeddingsRequest
from inference.formats import ChunkWriter, completion
from inference.prepare import GenerateRequest, RequestError
from jobspec.serving import choices_refusal
from worker.engine.errors import ModelNotFoundError

log = logging.getLogger(__name__)


def _error(exc: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _events(
    backend: Backend, request: GenerateRequest
) -> tuple[int, asyncio.Queue[Event], Callable[[], None]]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # called from the batch thread
        loop.call_soon_threadsafe(queue.put_nowait, event)

    try:
        prompt_tokens, handle = await backend.submit(request, emit)
    except ModelNotFoundError as exc:
        raise RequestError(404, f"The model '{request.model}' cannot be loaded: {exc}", param="model",
                           code="model_not_found") from None  # fmt: skip
    except Busy:
        raise RequestError(429, "The model server is busy; retry shortly.", code="server_busy") from None
    return prompt_tokens, queue, handle


async def _collect(
    request: GenerateRequest, prompt_tokens: int, queue: asyncio.Queue[Event]
) -> dict[str, Any]:
    texts, reasons, tokens = [""] * request.n, ["stop"] * request.n, 0
    while not isinstance(event := await queue.get(), Done):
        if isinstance(event, Failed):
            raise RequestError(
                503, f"The model server could not answer: {event.message}.", code="server_error"
            )
        if isinstance(event, Delta):
            texts[event.choice] += event.text
        elif isinstance(event, Finished):
            reasons[event.choice], tokens = event.reason, tokens + event.tokens
    return completion(request.kind, model=request.model, texts=texts, reasons=reasons,
                      prompt_tokens=prompt_tokens, completion_tokens=tokens)  # fmt: skip


async def _stream(
    request: GenerateRequest, prompt_tokens: int, queue: asyncio.Queue[Event], cancel: Callable[[], None]
) -> AsyncIterator[str]:
    writer = ChunkWriter(request.kind, request.model)
    tokens = 0
    try:
        if request.kind == "chat":
            for index in range(request.n):
                yield writer.chunk(index, "")
        while not isinstance(event := await queue.get(), Done):
            if isinstance(event, Failed):
                yield writer.error(f"The model server could not answer: {event.message}.")
                return
            if isinstance(event, Delta):
                yield writer.chunk(event.choice, event.text)
            elif isinstance(event, Finished):
                tokens += event.tokens
                yield writer.chunk(event.choice, "", event.reason)
        if request.include_usage:
            yield writer.usage(prompt_tokens, tokens)
        yield writer.done()
    finally:
        cancel()  # a client that left stops its rows at the next token


def create_app(settings: Settings) -> FastAPI:
    """The app; inference.auth.InsecureStart when it would answer callers without the secret."""
    secret = server_secret(settings)
    backend = make_backend(settings)
    app = FastAPI(title="SPPO model server", lifespan=_lifespan(backend))
    if secret is not None:
        app.add_middleware(SecretRequired, secret=secret)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    _add_generation(app, settings, backend)
    _add_embeddings(app, Embedder(backend.cache) if isinstance(backend, TransformersBackend) else None)
    _add_archives(app, settings)
    return app


def _lifespan(backend: Backend) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        backend.start()
        yield
        backend.stop()

    return lifespan


async def _request_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return _error(exc)


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"][1:]) or None
    return _error(RequestError(400, f"Invalid value for '{param}': {first['msg']}.", param=param,
                               code="invalid_value"))  # fmt: skip


def _add_generation(app: FastAPI, settings: Settings, backend: Backend) -> None:
    """`GET /health` and `POST /internal/generate`, answered by `backend`."""

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "backend": settings.inference_backend, **backend.stats()}

    @app.post("/internal/generate", response_model=None)
    async def generate(request: GenerateRequest) -> JSONResponse | StreamingResponse:
        if refusal := choices_refusal(request.n, settings.inference_max_n):
            raise RequestError(400, refusal, param="n", code="invalid_value")
        prompt_tokens, queue, cancel = await _events(backend, request)
        if request.stream:
            return StreamingResponse(
                _stream(request, prompt_tokens, queue, cancel), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )  # fmt: skip
        try:
            return JSONResponse(await _collect(request, prompt_tokens, queue))
        finally:
            cancel()


def _add_embeddings(app: FastAPI, embedder: Embedder | None) -> None:
    """`POST /internal/embeddings`: 501 where the backend has no embedder."""

    @app.post("/internal/embeddings")
    async def embeddings(request: EmbeddingsRequest) -> dict[str, Any]:
        if embedder is None:
            raise RequestError(501, "Embeddings are served by the transformers backend only.",
                               code="unsupported_backend")  # fmt: skip
        return await embedder.answer(request)


def _add_archives(app: FastAPI, settings: Settings) -> None:
    """`GET /internal/models/{name}/files`: a base model's files as one archive, deleted once sent."""

    @app.get("/internal/models/{name:path}/files", response_class=FileResponse)
    async def model_files(name: str) -> FileResponse:
        try:
            archive = await asyncio.to_thread(base_model_archive, settings, name)
        except ModelNotFoundError:
            raise RequestError(404, f"The model '{name}' does not exist.", param="model",
                               code="model_not_found") from None  # fmt: skip
        filename = f"{name.replace('/', '--')}.tar.gz"
        return FileResponse(archive, media_type="application/gzip", filename=filename,
                            background=BackgroundTask(archive.unlink, missing_ok=True))  # fmt: skip
