"""Only holders of SPPO_INFERENCE_SECRET get an answer from the model server (every route but /health), and
it does not start without one unless the dev setting allows it on loopback."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from cli.main import app as cli
from core.settings import Settings, get_settings
from inference.auth import InsecureStart
from inference.server import create_app

from .conftest import SECRET

CHAT: dict[str, Any] = {
    "kind": "chat", "model": "ft:rand-tiny:org::job", "base_model": "rand-tiny", "adapter_uri": "jobs/a",
    "messages": [{"role": "user", "content": "1+2="}], "temperature": 0.0, "max_tokens": 2,
}  # fmt: skip
ROUTES = [
    ("POST", "/internal/generate", CHAT),
    ("POST", "/internal/embeddings", {"model": "rand-tiny", "base_model": "rand-tiny", "input": ["1"]}),
    ("GET", "/internal/models/rand-tiny/files", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture(scope="module")
def anonymous(data_dir: Path) -> Iterator[TestClient]:
    """The app with a secret, called without one unless a test adds it."""
    with TestClient(create_app(Settings(data_dir=data_dir, inference_secret=SECRET))) as client:  # type: ignore[call-arg]
        yield client


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong",
        f"Bearer {SECRET}x",
        f"Bearer {SECRET[:-1]}",
        f"bearer {SECRET}",
        SECRET,
        f"Bearer  {SECRET}",
        f"Basic {SECRET}",
    ],
)
def test_a_missing_or_wrong_secret_is_401_on_every_route(
    anonymous: TestClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path, body in ROUTES:
        response = anonymous.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == {
            "message": "The model server answers only the API: a missing or wrong SPPO_INFERENCE_SECRET.",
            "type": "invalid_request_error", "param": None, "code": "invalid_model_server_secret",
        }  # fmt: skip
        assert SECRET not in response.text


def test_the_secret_opens_every_route_and_health_needs_none(anonymous: TestClient) -> None:
    assert anonymous.get("/health").status_code == 200
    headers = {"Authorization": f"Bearer {SECRET}"}
    for method, path, body in ROUTES:
        assert anonymous.request(method, path, json=body, headers=headers).status_code == 200, path
    # two Authorization headers, one of them right: refused (which one a proxy would read is unclear)
    twice = [("authorization", f"Bearer {SECRET}"), ("authorization", "Bearer wrong")]
    assert anonymous.post("/internal/generate", json=CHAT, headers=twice).status_code == 401


def test_no_start_without_a_secret_unless_allowed_on_loopback(data_dir: Path) -> None:
    with pytest.raises(InsecureStart, match="SPPO_INFERENCE_SECRET is not set"):
        create_app(Settings(data_dir=data_dir))  # type: ignore[call-arg]
    for host in ("0.0.0.0", "10.1.2.3", "models"):
        with pytest.raises(InsecureStart, match=f"SPPO_INFERENCE_HOST is {host}"):
            create_app(Settings(data_dir=data_dir, inference_allow_no_secret=True, inference_host=host))  # type: ignore[call-arg]
    for host in ("127.0.0.1", "::1", "localhost"):
        settings = Settings(data_dir=data_dir, inference_allow_no_secret=True, inference_host=host)  # type: ignore[call-arg]
        with TestClient(create_app(settings)) as client:
            assert client.post("/internal/generate", json=CHAT).status_code == 200  # open, as asked
    with pytest.raises(ValidationError, match="SPPO_INFERENCE_SECRET must be at least 32 characters"):
        Settings(data_dir=data_dir, inference_secret="x" * 31)  # type: ignore[call-arg]


def test_serve_models_refuses_to_start_without_a_secret(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPPO_INFERENCE_SECRET", raising=False)
    monkeypatch.setenv("SPPO_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["serve-models"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "SPPO_INFERENCE_SECRET is not set" in result.output
