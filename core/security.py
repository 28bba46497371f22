"""API keys: high-entropy random secrets; only their sha256 is stored (a slow hash adds nothing here)."""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

KEY_PREFIX = "sk-sppo-"
DISPLAY_PREFIX_LEN = 12


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


def operator_secret(configured: SecretStr | None, key_file: Path) -> str:
    """The operator's key as configured, else a random one kept in `key_file` (enough where every process
    shares data_dir, as under `sppo run`)."""
    return configured.get_secret_value() if configured is not None else secret_from_file(key_file)


def secret_from_file(path: Path) -> str:
    """A random secret created once with mode 0600 (like the dev API key), so restarts keep it."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
