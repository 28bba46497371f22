"""Dependencies of the routes, as `Annotated` aliases: `SessionDep`, `SettingsDep`, `CurrentTenant`."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.errors import AuthenticationError
from app.logs import bind_log_ids
from app.models import Tenant
from app.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


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
