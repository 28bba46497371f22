"""ASGI middleware: a request id on every request and response, metrics, and the upload size limit."""

import logging
import re
import time
import uuid

import structlog
from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.logs import new_log_context, reset_log_context
from app.metrics import observe_request

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


class UploadLimitMiddleware:
    """Refuses an upload over the limit before reading it (by Content-Length) or while reading it."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_body = max_bytes + _MULTIPART_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _too_large(scope, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise HTTPException(413, "File is larger than the upload limit.")
            return message

        await self.app(scope, counting_receive, send)


async def _too_large(scope: Scope, send: Send) -> None:
    from fastapi.responses import JSONResponse

    body = error_body(
        "File is larger than the upload limit.", "invalid_request_error", "file", "file_too_large"
    )
    await JSONResponse(body, status_code=413)(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}
