"""Dashboard sign-in: an API key is checked once, then a server-side session row stands for it.

The cookie carries a random session token; the row holds only its hash and the key's id. Every request
re-reads the row joined to its key, so signing out (the row is deleted) or revoking the key
(`sppo keys revoke`) ends the session at once, whatever copy of the cookie is replayed later.
"""

import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.services.keys import authenticate
from core.models import ApiKey, DashboardSession, Tenant, now
from core.security import hash_api_key

SESSION_TTL_S = 12 * 3600


def _token_hash(token: str) -> str:
    # The same sha256 as API keys: a random 256-bit token needs no slow hash.
    return hash_api_key(token)


def sign_in(session: Session, *, key: str) -> str:
    """A new session token for a valid, unrevoked API key; raises AuthenticationError otherwise."""
    authenticate(session, authorization=f"Bearer {key.strip()}")
    key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key.strip())))
    assert key_id is not None  # authenticate just found it
    token = secrets.token_urlsafe(32)
    stamp = now()
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= stamp))
    session.add(
        DashboardSession(
            id=_token_hash(token), key_id=key_id, created_at=stamp, expires_at=stamp + SESSION_TTL_S
        )
    )
    session.commit()
    return token


def sign_out(session: Session, *, token: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.id == _token_hash(token)))
    session.commit()


def session_tenant(session: Session, *, token: str) -> Tenant | None:
    """The tenant of a live session, or None when it was signed out, expired, or its key was revoked."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .join(DashboardSession, DashboardSession.key_id == ApiKey.id)
        .where(
            DashboardSession.id == _token_hash(token),
            DashboardSession.expires_at > now(),
            ApiKey.revoked_at.is_(None),
        )
    )
