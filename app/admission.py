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
import time
from collections.abc import Callable

import anyio
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import DB_UNAVAILABLE, APIError, ServiceUnavailable
from app.middleware import bad_target, send_error
from app.services.keys import authenticate
from core.db import get_sessionmaker
from core.models import Tenant
from core.security import hash_api_key

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


class KeyCache:
    """Tenants of the API keys this process checked in the last `ttl_s` seconds, by a hash of the header.

    Why: checking a key is a DB transaction of its own (a pooled connection, its ping, a query, a commit,
    a thread hop), measured at 40% of the server's CPU for a job-status poll; a client polling at 200
    req/s needs it once a second instead. The price: a key revoked right after this process checked it
    keeps working here for up to `ttl_s` (docs/security.md). Only successes are kept: an unknown or
    revoked key goes to the DB every time (and counts against its rate limit first). Used from the event
    loop only, so it needs no lock.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Tenant]] = {}

    @staticmethod
    def key_of(authorization: str) -> str:
        return hash_api_key(authorization)  # the whole header: the key as sent is never kept

    def get(self, key: str) -> Tenant | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, tenant: Tenant) -> None:
        if self.ttl_s <= 0:
            return
        now = self.clock()
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {k: entry for k, entry in self._entries.items() if entry[0] > now}
            if len(self._entries) >= self.MAX_ENTRIES:  # all fresh: drop the oldest
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (now + self.ttl_s, tenant)


class AuthFirstMiddleware:
    """Authenticates every `/v1` request from its headers alone, before a byte of its body is read.

    An unauthenticated upload or JSON body is answered 401 unread (nothing parsed, nothing on disk). The
    tenant goes to `request.state.tenant`, which the `CurrentTenant` dependency returns. A key checked in
    the last `cache_s` seconds is not checked again (`KeyCache`).
    """

    def __init__(self, app: ASGIApp, *, prefix: str = "/v1/", cache_s: float = 0.0) -> None:
        self.app = app
        self.prefix = prefix
        self.cache = KeyCache(cache_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        refused = bad_target(scope)
        if refused is not None:
            await send_error(scope, send, refused)
            return
        authorization = Headers(scope=scope).get("authorization")
        cache_key = KeyCache.key_of(authorization) if authorization else None
        tenant = self.cache.get(cache_key) if cache_key else None
        if tenant is None:
            try:
                tenant = await anyio.to_thread.run_sync(authenticate_header, authorization)
            except APIError as error:
                await send_error(scope, send, error)
                return
            except (SATimeoutError, OperationalError):
                await send_error(scope, send, DB_UNAVAILABLE, headers={"Retry-After": "1"})
                return
            if cache_key:
                self.cache.put(cache_key, tenant)
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
