"""Bearer API keys: missing, malformed, unknown and revoked keys answer 401 with an OpenAI error body."""

import time

import httpx
from sqlalchemy import select

from app.services.keys import revoke_key
from core.db import session_scope
from core.models import ApiKey
from core.security import hash_api_key
from core.settings import Settings

from .conftest import Server, assert_error


def test_missing_and_malformed_keys_are_401(server: Server) -> None:
    with server.client() as anonymous:
        error = assert_error(anonymous.get("/v1/files"), 401)
        assert error["code"] == "missing_api_key"
        assert_error(anonymous.get("/v1/files", headers={"Authorization": "Basic abc"}), 401)
        assert_error(anonymous.get("/v1/models", headers={"Authorization": "Bearer"}), 401)


def test_unknown_key_is_401_and_not_echoed(server: Server) -> None:
    with server.client("sk-sppo-not-a-real-key-0123456789") as client:
        response = client.get("/v1/fine_tuning/jobs")
    error = assert_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert "0123456789" not in error["message"]  # only a short prefix is quoted back
    assert response.headers["X-Request-ID"]


def test_valid_key_works_and_revoked_key_is_401_within_the_key_cache_time(server: Server) -> None:
    key = server.new_key()
    with server.client(key) as client:
        assert client.get("/v1/files").status_code == 200
        with session_scope(server.db_url) as session:
            api_key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key)))
            assert api_key is not None
            assert api_key.last_used_at is not None
            assert api_key.prefix == key[:12]
            revoke_key(session, key_id=api_key.id)
        time.sleep(Settings.model_fields["auth_cache_s"].default + 0.1)  # the process's trust in it lapses
        assert_error(client.get("/v1/files"), 401)


def test_only_the_hash_is_stored(server: Server) -> None:
    key = server.new_key()
    with session_scope(server.db_url) as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert key not in stored
    assert hash_api_key(key) in stored
    assert isinstance(httpx.get(f"{server.base_url}/health").json(), dict)
