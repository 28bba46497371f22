"""ASGI middleware that applies the per-key limits (app/ratelimit.py) before a request reaches a route.

It runs before authentication and before any body is read, so a refused request costs one Redis round
trip and no database work. The subject is a hash of the credential the request carries: the Bearer key
for the API, the session cookie for the dashboard. Requests with neither (probes, sign-in page) are not
counted here: they reach no tenant data.

When Redis is unreachable, reads are let through (with a log line at most every `_WARN_EVERY_S`) so an
outage of the limiter does not take the read API down with it; writes are refused with 503, because
the limits on them bound disk and compute, and the broker they would be queued on is that same Redis.
"""

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid

import redis
import redis.asyncio as aioredis
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.ratelimit import STREAM_REFRESH_S, Hit, Limiter, Window
from app.web.session import COOKIE
from core.queues import redis_key
from core.settings import Settings

log = logging.getLogger(__name__)

_STREAM = re.compile(r"^(/v1/fine_tuning/jobs/[^/]+/metrics/stream|/ui/jobs/[^/]+/stream)$")
_UPLOADS = {"/v1/files", "/jobs/new"}
# The new-job form stores its upload before it creates the job: a form refused for its job may still have
# stored a file, so every submission counts (elsewhere only accepted work does).
_UPLOADS_ALWAYS_COUNTED = {"/jobs/new"}
_EVALUATIONS = {"/v1/evaluations"}
_GRADER_RUNS = {"/v1/fine_tuning/alpha/graders/run", "/ui/graders/run"}
_UNCOUNTED = {"/health", "/ready", "/metrics"}
_READS = {"GET", "HEAD", "OPTIONS"}
# Stopping work costs no disk or compute and needs no broker: let it through while Redis is down.
_STOPS = re.compile(r"^(/v1/fine_tuning)?/jobs/[^/]+/(cancel|pause)$")
_WARN_EVERY_S = 30.0
_STREAM_RETRY_AFTER_S = 5
_UNAVAILABLE_RETRY_AFTER_S = 5


def subject_of(headers: Headers) -> str | None:
    """Who a request counts against: a hash of its Bearer key, else of its session cookie, else nobody."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    credential = f"key:{token.strip()}" if scheme.lower() == "bearer" and token.strip() else None
    if credential is None:
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE)
        credential = f"session:{cookie}" if cookie else None
    if credential is None:
        return None
    # Its own hash (not the stored key hash), so Redis never holds anything the database does.
    return hashlib.sha256(f"sppo-ratelimit:{credential}".encode()).hexdigest()[:32]


def windows_for(settings: Settings, method: str, path: str) -> list[Window]:
    windows = [
        Window("requests", settings.rate_limit_requests_per_second, 1),
        Window("requests", settings.rate_limit_requests_per_minute, 60),
    ]
    if method == "POST" and path in _UPLOADS:
        accepted_only = path not in _UPLOADS_ALWAYS_COUNTED
        windows.append(Window("uploads", settings.rate_limit_uploads_per_hour, 3600, accepted_only))
    if method == "POST" and path in _EVALUATIONS:
        windows.append(
            Window("evaluations", settings.rate_limit_evaluations_per_hour, 3600, accepted_only=True)
        )
    if method == "POST" and path in _GRADER_RUNS:
        windows.append(
            Window("grader_runs", settings.rate_limit_grader_runs_per_minute, 60, accepted_only=True)
        )
    return windows


class RateLimitMiddleware:
    """Answers 429 with Retry-After (OpenAI's `rate_limit_error`) once a key is over one of its limits."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._limiter: Limiter | None = None
        self._warned_at = -_WARN_EVERY_S

    def limiter(self) -> Limiter:
        # Created on first use, inside the server's event loop (a client is bound to the loop it runs on).
        if self._limiter is None:
            client = aioredis.Redis.from_url(
                str(self.settings.redis_url), socket_connect_timeout=0.5, socket_timeout=0.5
            )
            self._limiter = Limiter(client, redis_key("ratelimit"))
        return self._limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in _UNCOUNTED or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        subject = subject_of(Headers(scope=scope))
        if subject is None:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        stream = method == "GET" and _STREAM.match(path) is not None
        slot = uuid.uuid4().hex
        try:
            hit = await self.limiter().hit(subject, windows_for(self.settings, method, path))
            if hit.retry_after:
                await _refuse(scope, send, "Rate limit reached for this API key.", hit.retry_after)
                return
            if stream and not await self.limiter().acquire_stream(
                subject, slot, self.settings.rate_limit_streams
            ):
                message = f"This API key already has {self.settings.rate_limit_streams} open streams."
                await _refuse(scope, send, message, _STREAM_RETRY_AFTER_S, code="too_many_streams")
                return
        except (redis.RedisError, OSError):
            if method not in _READS and not (method == "POST" and _STOPS.match(path)):
                await _unavailable(scope, send)
                return
            self._warn_open()
            await self.app(scope, receive, send)
            return
        if stream:
            await self._stream(scope, receive, send, subject, slot)
        elif hit.refundable:
            await self._quota(scope, receive, send, hit)
        else:
            await self.app(scope, receive, send)

    async def _quota(self, scope: Scope, receive: Receive, send: Send, hit: Hit) -> None:
        """Runs a request counted against a quota on work, and gives the count back unless it was accepted
        (a 400, 413 or 503 did no work: it must not use up the hour's uploads)."""
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not 200 <= status < 400:
                with contextlib.suppress(redis.RedisError, OSError):
                    await self.limiter().give_back(hit)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, subject: str, slot: str) -> None:
        """Holds the stream's slot while the response lasts, refreshing it so it does not lapse."""
        refresher = asyncio.create_task(self._keep_slot(subject, slot))
        try:
            await self.app(scope, receive, send)
        finally:
            refresher.cancel()
            with contextlib.suppress(redis.RedisError, OSError):
                await self.limiter().release_stream(subject, slot)

    async def _keep_slot(self, subject: str, slot: str) -> None:
        while True:
            await asyncio.sleep(STREAM_REFRESH_S)
            with contextlib.suppress(redis.RedisError, OSError):
                await self.limiter().refresh_stream(subject, slot)

    def _warn_open(self) -> None:
        if time.monotonic() - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning("rate limiter unreachable (Redis); letting reads through unlimited", exc_info=True)


async def _refuse(
    scope: Scope, send: Send, message: str, retry_after: int, code: str = "rate_limit_exceeded"
) -> None:
    body = error_body(f"{message} Retry after {retry_after} s.", "rate_limit_error", None, code)
    response = JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})
    await response(scope, _disconnected, send)


async def _unavailable(scope: Scope, send: Send) -> None:
    body = error_body(
        "The rate limiter (Redis) is unreachable; retry shortly.", "server_error", None, "service_unavailable"
    )
    headers = {"Retry-After": str(_UNAVAILABLE_RETRY_AFTER_S)}
    await JSONResponse(body, status_code=503, headers=headers)(scope, _disconnected, send)


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}
