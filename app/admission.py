"""Admission to the API: a bounded number of requests at work, and the API key checked before any body.

Why a bound: sync routes run on a pool of threads and use a pool of DB connections. Without a bound, a
burst lets more requests start than there are connections; those that got a connection then wait for a
thread while every thread waits for a connection, and the process wedges (measured: 200 req/s from a key
idle for a minute hung the API for 15 minutes). With at most `limit` requests at work, and `limit` below
the connection pool and the thread pool (checked in Settings), no request ever waits for a connection
while holding what another needs; the rest wait in line, in order, and past `timeout_s` are answered 503
with Retry-After: a burst slows the API down, it never wedges it. A slot is released when the response
starts, so a long stream (SSE, which holds no DB connection) does not keep one.
"""

import asyncio
import math

import anyio
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import get_sessionmaker
from app.errors import DB_UNAVAILABLE, APIError, ServiceUnavailable
from app.middleware import bad_target, send_error
from app.models import Tenant
from app.services.keys import authenticate

# Liveness must answer while the API is saturated; it touches neither the DB nor a thread.
_EXEMPT = ("/health",)


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int, timeout_s: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self._slots: asyncio.Semaphore | None = None  # made on first use, inside the server's event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _EXEMPT or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        slots = self._slots
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.timeout_s)
        except TimeoutError:
            busy = ServiceUnavailable("The server is busy; retry shortly.", code="server_busy")
            await send_error(scope, send, busy, headers={"Retry-After": str(math.ceil(self.timeout_s))})
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                slots.release()

        async def send_releasing(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_releasing)
        finally:
            release()


class AuthFirstMiddleware:
    """Authenticates every `/v1` request from its headers alone, before a byte of its body is read.

    An unauthenticated upload or JSON body is answered 401 unread (nothing parsed, nothing on disk). The
    tenant goes to `request.state.tenant`, which the `CurrentTenant` dependency returns.
    """

    def __init__(self, app: ASGIApp, *, prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        refused = bad_target(scope)
        if refused is not None:
            await send_error(scope, send, refused)
            return
        authorization = Headers(scope=scope).get("authorization")
        try:
            tenant = await anyio.to_thread.run_sync(authenticate_header, authorization)
        except APIError as error:
            await send_error(scope, send, error)
            return
        except (SATimeoutError, OperationalError):
            await send_error(scope, send, DB_UNAVAILABLE, headers={"Retry-After": "1"})
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def authenticate_header(authorization: str | None) -> Tenant:
    """`authenticate` in a session of its own, retried once on a connection the DB server dropped."""
    try:
        return _authenticate(authorization)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return _authenticate(authorization)


def _authenticate(authorization: str | None) -> Tenant:
    with get_sessionmaker()() as session:
        return authenticate(session, authorization=authorization)
