"""Dependencies of the routes, as `Annotated` aliases: `SessionDep`, `SettingsDep`, `CurrentTenant`."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.logs import bind_log_ids
from app.models import Tenant
from app.services.keys import authenticate
from app.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_current_tenant(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    tenant = authenticate(session, authorization=authorization)
    bind_log_ids(tenant_id=tenant.id)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
After = Annotated[str | None, Query(max_length=64, description="Id of the last object of the previous page.")]
