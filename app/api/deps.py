"""Dependencies of the routes, as `Annotated` aliases: `SessionDep`, `SettingsDep`, `CurrentTenant`."""

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from app.errors import AuthenticationError
from core.db import get_sessionmaker
from core.logs import bind_log_ids
from core.models import Tenant
from core.settings import Settings, get_settings


async def get_session() -> AsyncIterator[Session]:
    """A session made on the event loop and closed in a worker thread.

    Why async: a sync generator dependency costs FastAPI two thread hops, one to open the session and one
    to close it. Opening does no I/O (the connection is checked out at the first query, in the route's
    thread), so only closing (which returns the connection with a rollback, a round trip) needs a thread.
    As FastAPI does for a sync dependency's exit, the close is shielded from cancellation and has a
    limiter of its own, so it never waits for a thread that a request waiting on the DB pool holds.
    """
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


# Function scope: the session closes when the route returns, before the response is sent, so neither a
# slow client nor a stream (SSE, file download) keeps a DB connection.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_current_tenant(request: Request) -> Tenant:
    """The tenant AuthFirstMiddleware authenticated from the Authorization header, before the body."""
    tenant = getattr(request.state, "tenant", None)
    if not isinstance(tenant, Tenant):
        raise AuthenticationError("You didn't provide an API key.", code="missing_api_key")
    bind_log_ids(tenant_id=tenant.id)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
After = Annotated[str | None, Query(max_length=64, description="Id of the last object of the previous page.")]
