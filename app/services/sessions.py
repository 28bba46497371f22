"""Dashboard sign-in: an API key is checked once, then the session names only the key's id.

Every request re-reads that key row, so revoking the key (`sppo keys revoke`) ends its sessions too.
"""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, Tenant
from app.security import hash_api_key
from app.services.keys import authenticate


def sign_in(session: Session, *, key: str) -> str:
    """The id of a valid, unrevoked API key; raises AuthenticationError (with the API's message) otherwise."""
    authenticate(session, authorization=f"Bearer {key.strip()}")
    key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key.strip())))
    assert key_id is not None  # authenticate just found it
    return key_id


def session_tenant(session: Session, *, key_id: str) -> Tenant | None:
    """The tenant of a signed-in session's key, or None when the key is gone or revoked."""
    return session.scalar(select(Tenant).join(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))
