"""Tenants and their API keys."""

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.errors import AuthenticationError, NotFound
from app.models import ApiKey, Tenant, now
from app.security import display_prefix, generate_api_key, hash_api_key, key_matches

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
    """The tenant of a `Bearer sk-...` header; 401 for a missing, unknown or revoked key."""
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
    if found is None or not key_matches(key, found[0].key_hash) or found[0].revoked_at is not None:
        raise AuthenticationError(f"Incorrect API key provided: {display_prefix(key)}...")
    api_key, tenant = found
    stamp = now()
    if api_key.last_used_at is None or stamp - api_key.last_used_at >= _LAST_USED_RESOLUTION_S:
        session.execute(update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=stamp))
        session.commit()
    return tenant
