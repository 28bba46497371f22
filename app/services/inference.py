"""Using a model: resolve the requested name to what the model server loads, and proxy to it.

The API never loads a model. It decides which base model and adapter a tenant's request may use (its own
fine-tuned models and checkpoints, or a registry base model) and forwards the checked request to
`sppo serve-models`, showing it the shared secret (SPPO_INFERENCE_SECRET); that server's answer (JSON, SSE
chunks or an OpenAI error) is passed on unchanged. A model server that is down, busy or slow answers 503/429
with Retry-After, in bounded time; so does one that refuses the secret (the tenant's key is not at fault).
"""

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from app.errors import APIError, InvalidRequest, NotFound, ServiceUnavailable
from core.model_targets import ModelTarget, find_model_target
from core.models import Tenant
from core.settings import Settings
from grading.http import auth_headers
from jobspec.serving import choices_refusal

CONNECT_TIMEOUT_S = 2.0
RETRY_AFTER_S = 5

log = logging.getLogger(__name__)


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model", code="model_not_found",
    )  # fmt: skip


def resolve_model(session: Session, *, settings: Settings, tenant: Tenant, model: str) -> ModelTarget:
    """A base model, the tenant's `ft:` model, or a checkpoint of the tenant's job (core.model_targets)."""
    target = find_model_target(session, settings=settings, tenant_id=tenant.id, model=model)
    if target is None:
        raise model_not_found(model)
    return target


async def _send(
    settings: Settings, method: str, path: str, json: dict[str, Any] | None = None
) -> httpx.Response:
    """The model server's streamed answer (status 200), or the APIError its answer or absence means.

    One client per request: the API's event loops (uvicorn, test clients) never share a pool.
    """
    secret, where = settings.inference_secret, settings.inference_url
    client = httpx.AsyncClient(
        base_url=settings.inference_url,
        timeout=httpx.Timeout(settings.inference_timeout_s, connect=CONNECT_TIMEOUT_S),
        headers=auth_headers(secret.get_secret_value() if secret is not None else None),
    )
    try:
        response = await client.send(client.build_request(method, path, json=json), stream=True)
    except httpx.TimeoutException:
        await client.aclose()
        raise _unavailable(
            f"The model server at {settings.inference_url} did not answer in time; retry shortly."
        ) from None
    except httpx.TransportError:
        await client.aclose()
        raise _unavailable(
            f"The model server at {where} (SPPO_INFERENCE_URL) is not reachable; retry shortly."
        ) from None
    if response.status_code != 200:
        await response.aread()
        await client.aclose()
        if response.status_code == 401:
            log.error("the model server refused this API's SPPO_INFERENCE_SECRET; set the same one for both")
            raise _unavailable("The model server refused this API's credentials; retry later.")
        raise _relayed_error(response)
    response.extensions["sppo_client"] = client
    return response


async def _close(response: httpx.Response) -> None:
    await response.aclose()
    await response.extensions["sppo_client"].aclose()


def _unavailable(message: str) -> ServiceUnavailable:
    error = ServiceUnavailable(message, code="model_server_unavailable")
    error.retry_after = RETRY_AFTER_S
    return error


def _relayed_error(response: httpx.Response) -> APIError:
    """The model server's OpenAI error body, as an APIError with the same status."""
    try:
        detail = response.json()["error"]
        error = APIError(str(detail["message"]), param=detail.get("param"), code=detail.get("code"))
        error.type = str(detail.get("type") or "invalid_request_error")
    except (ValueError, KeyError, TypeError):
        error = APIError("The model server gave an unreadable answer.", code="server_error")
        error.type = "server_error"
    error.status_code = response.status_code
    if response.status_code in (429, 503):
        error.retry_after = int(response.headers.get("retry-after", RETRY_AFTER_S))
    return error


async def proxy_generate(
    *, settings: Settings, target: ModelTarget, request: dict[str, Any], stream: bool
) -> Response:
    """Forward a checked request; stream the answer through when asked to."""
    if refusal := choices_refusal(request["n"], settings.inference_max_n):
        raise InvalidRequest(refusal, param="n", code="invalid_value")
    payload = {**request, "model": target.model, "base_model": target.base_model,
               "adapter_uri": target.adapter_uri}  # fmt: skip
    response = await _send(settings, "POST", "/internal/generate", payload)
    if stream:
        return StreamingResponse(
            _passthrough(response), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(_close, response),
        )  # fmt: skip
    try:
        content = await response.aread()
    except httpx.TimeoutException:
        raise _unavailable("The model server did not finish in time; retry shortly.") from None
    finally:
        await _close(response)
    return Response(content, media_type="application/json")


async def _passthrough(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError:  # the model server went away mid-stream: end the stream with an error
        yield (b'data: {"error": {"message": "The model server stopped answering.", '
               b'"type": "server_error", "param": null, "code": null}}\n\n')  # fmt: skip


async def proxy_model_files(*, settings: Settings, name: str) -> StreamingResponse:
    """A base model's files (tar.gz), streamed from the model server, which owns the model directory."""
    response = await _send(settings, "GET", f"/internal/models/{name}/files")
    filename = f"{name.replace('/', '--')}.tar.gz"
    return StreamingResponse(
        response.aiter_raw(), media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        background=BackgroundTask(_close, response),
    )  # fmt: skip
