"""API keys: high-entropy random secrets; only their sha256 is stored (a slow hash adds nothing here)."""

import hashlib
import hmac
import secrets

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
