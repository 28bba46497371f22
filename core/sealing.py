"""Secrets a tenant gives with a job (a W&B API key), sealed: the database never holds them in the clear.

The key is derived from the operator's (`SPPO_SECRETS_KEY`, else a random one kept in data_dir like the
webhook key): the API seals at job creation, the worker that runs the job opens, and nothing echoes them.
Fernet is authenticated encryption, so a tampered row is refused rather than opened to garbage.
"""

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

from core.security import operator_secret
from core.settings import Settings

KEY_FILE = "secrets-key"


class SealError(ValueError):
    """A sealed secret that this service's key does not open (the key changed, or the row was altered)."""


def _fernet(settings: Settings) -> Fernet:
    operator_key = operator_secret(settings.secrets_key, settings.data_dir / KEY_FILE)
    derived = hmac.new(operator_key.encode(), b"sppo.sealed-secret", hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(settings: Settings, secret: str) -> str:
    return _fernet(settings).encrypt(secret.encode()).decode()


def unseal(settings: Settings, sealed: str) -> str:
    try:
        return _fernet(settings).decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SealError("the secret was sealed with another key (was SPPO_SECRETS_KEY changed?)") from None
