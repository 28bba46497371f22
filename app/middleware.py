"""ASGI middleware: a request id on every request and response, metrics, and body size and time limits."""

import asyncio
import logging
import re
import time
import uuid
from urllib.parse import parse_qsl

import structlog
from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import APIError, InvalidRequest, PayloadTooLarge, error_body
from app.metrics import observe_request
from core.logs import new_log_context, reset_log_context

log = logging.getLogger(__name__)
request_log = structlog.get_logger("sppo.request")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Multipart framing (boundaries, part headers, the purpose field) on top of the file itself.
_MULTIPART_SLACK = 64 * 1024


class RequestContextMiddleware:
    """Gives each request an id (a caller's X-Request-ID if it is safe) that the logs and 500 bodies quote,
    counts it in the metrics and writes one log line for it (uvicorn's access log, with the ids added)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        context = new_log_context(request_id=request_id)  # the auth dependency adds tenant_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = route_template(scope)
            seconds = time.perf_counter() - started
            observe_request(scope["method"], path, status, seconds)
            request_log.info(
                "request", method=scope["method"], path=scope["path"], route=path, status=status,
                duration_ms=round(seconds * 1000, 1),
            )  # fmt: skip
            reset_log_context(context)


def route_template(scope: Scope) -> str:
    """The matched route's full template (`/v1/models`), so ids never become metric label values.

    An included router's route knows only its own part (`/models`); the prefix is the request path's
    leading segments, which hold no parameters in this app. `unmatched` for a 404 outside any route.
    """
    template: str | None = getattr(scope.get("route"), "path", None)
    if template is None:
        return "unmatched"
    if ":path}" in template:  # a path parameter spans segments: the prefix cannot be counted off
        return template
    segments, own = scope["path"].split("/"), template.split("/")
    return "/".join(segments[: max(1, len(segments) - len(own) + 1)]) + template


class BodyLimitMiddleware:
    """Every request body has a size limit and a time limit, enforced before and while it is read.

    The size: by Content-Length before reading (413 at once), else by counting while reading. The time: a
    body must arrive within `timeout_s` plus its size at `min_rate` bytes/s, so a slow upload is cut off
    (408) instead of holding a connection and a worker thread for as long as the client likes.
    """

    def __init__(
        self, app: ASGIApp, *, limits: dict[str, int], default: int, timeout_s: float, min_rate: int
    ) -> None:
        self.app = app
        self.limits = {path: size + _MULTIPART_SLACK for path, size in limits.items()}
        self.default = default
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(scope, send, PayloadTooLarge("The request body is larger than the limit."))
            return
        started = time.monotonic()
        received = 0
        complete = False
        cut_off = False

        async def limited_receive() -> Message:
            nonlocal received, complete, cut_off
            if complete:  # after the body only a disconnect can come: no time limit on waiting for it
                return await receive()
            allowed = self.timeout_s + received / self.min_rate - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(allowed, 0.001))
            except TimeoutError:
                cut_off = True
                raise HTTPException(408, "The request body was not received in time.") from None
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received > limit:
                cut_off = True
                raise HTTPException(413, "The request body is larger than the limit.")
            return message

        async def closing_send(message: Message) -> None:
            # The rest of a cut-off body is never read: without `Connection: close` the server would go on
            # receiving (and discarding) it on the kept-alive connection, gigabytes of a chunked upload.
            if cut_off and message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        await self.app(scope, limited_receive, closing_send)


def bad_target(scope: Scope) -> APIError | None:
    """A 400 for NUL in the path or the query: no id, cursor or filter may carry one (PostgreSQL refuses
    NUL in text, which made every such request a 500)."""
    if "\x00" in scope["path"]:
        return InvalidRequest("The request path must not contain NUL characters.", param="path")
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if "\x00" in key or "\x00" in value:
            return InvalidRequest(f"Query parameter '{key}' must not contain NUL characters.", param=key)
    return None


def has_body(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


async def send_error(
    scope: Scope, send: Send, error: APIError, headers: dict[str, str] | None = None
) -> None:
    """Answer with `error` without reading the request body. If the request has one, the connection is
    closed after the answer, so the client cannot go on sending a body nobody reads."""
    from fastapi.responses import JSONResponse

    extra = {"Connection": "close"} if has_body(scope) else {}
    body = error_body(error.message, error.type, error.param, error.code)
    response = JSONResponse(body, status_code=error.status_code, headers={**extra, **(headers or {})})
    await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}
