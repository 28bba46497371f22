"""Tenants and their API keys."""

import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.errors import AuthenticationError, NotFound
from core.models import ApiKey, Tenant, now
from core.security import display_prefix, generate_api_key, hash_api_key, key_matches

log = logging.getLogger(__name__)

# Writing last_used_at on every request would turn each read into a write; a minute's precision is enough.
_LAST_USED_RESOLUTION_S = 60


@dataclass(frozen=True)
class CreatedKey:
    tenant: Tenant
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def ensure_tenant(session: Session, *, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, *, tenant_name: str, key_name: str | None = None) -> CreatedKey:
    """Create an API key for a tenant (creating the tenant on first use)."""
    tenant = ensure_tenant(session, name=tenant_name)
    plaintext = generate_api_key()
    api_key = ApiKey(
        tenant_id=tenant.id, key_hash=hash_api_key(plaintext), prefix=display_prefix(plaintext), name=key_name
    )
    session.add(api_key)
    session.commit()
    return CreatedKey(tenant=tenant, api_key=api_key, plaintext=plaintext)


def list_keys(session: Session, *, tenant_name: str | None = None) -> list[tuple[ApiKey, Tenant]]:
    query = select(ApiKey, Tenant).join(Tenant).order_by(Tenant.name, ApiKey.created_at, ApiKey.id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return [(key, tenant) for key, tenant in session.execute(query)]


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    api_key = session.get(ApiKey, key_id)
    if api_key is None:
        raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
    if api_key.revoked_at is None:
        api_key.revoked_at = now()
        session.commit()
    return api_key


def authenticate(session: Session, *, authorization: str | None) -> Tenant:
    """The tenant of a `Bearer sk-...` header; 401 for a missing, unknown or revoked key.

    Ends the session's transaction before returning, so the caller holds no connection afterwards.
    """
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.",
            code="missing_api_key",
        )
    found = session.execute(
        select(ApiKey, Tenant).join(Tenant).where(ApiKey.key_hash == hash_api_key(key))
    ).one_or_none()
    session.commit()  # ends the read (expire_on_commit is off); the touch below is a transaction of its own
    if found is None or not key_matches(key, found[0].key_hash) or found[0].revoked_at is not None:
        raise AuthenticationError(f"Incorrect API key provided: {display_prefix(key)}...")
    api_key, tenant = found
    _touch(session, api_key)
    return tenant


def _touch(session: Session, api_key: ApiKey) -> None:
    """Record that the key was used, at most once a minute, without ever waiting for a lock.

    A burst from a key idle for a minute makes every request want this write at once; under PostgreSQL
    they queued on the row lock while holding their connections, which wedged the whole API. Now only
    requests that see a stale stamp try, `SKIP LOCKED` lets all but one of them skip at once, and a
    failure here never fails the request (the stamp is bookkeeping, not security).
    """
    stamp = now()
    if api_key.last_used_at is not None and stamp - api_key.last_used_at < _LAST_USED_RESOLUTION_S:
        return
    stale = (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= stamp - _LAST_USED_RESOLUTION_S)
    try:
        locked = session.scalar(
            select(ApiKey.id).where(ApiKey.id == api_key.id, stale).with_for_update(skip_locked=True)
        )
        if locked is not None:
            session.execute(update(ApiKey).where(ApiKey.id == locked).values(last_used_at=stamp))
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.warning("could not record the use of API key %s", api_key.id, exc_info=True)
