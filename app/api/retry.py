"""Read-only routes run again once when the database dropped their connection mid-request.

Pool pre-ping (core/db.py) replaces a connection that died while idle in the pool, but not one the server
drops while a request uses it (a restart, a failover, `pg_terminate_backend`): that request fails. A GET
or HEAD reads only (its one bookkeeping write, the key's `last_used_at`, is made before and apart), so
running it again on a fresh connection is safe, and the client gets its answer instead of a 503. Other
methods are not retried: whether their transaction committed is unknown, so they answer 503 with
Retry-After (app/errors.py) and the client decides.
"""

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

_READ_ONLY = {"GET", "HEAD"}


class ReadRetryRoute(APIRoute):
    """An APIRoute whose GET and HEAD requests are run again once after a dropped DB connection."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def retrying_handler(request: Request) -> Response:
            if request.method not in _READ_ONLY:
                return await handler(request)
            try:
                return await handler(request)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                log.warning("%s %s: DB connection dropped; reading again", request.method, request.url.path)
            return await handler(request)  # a new session, so a new connection from the pool

        return retrying_handler
