"""Probes, Prometheus metrics, the model listing and the error contract (request ids, no stack traces)."""

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.main import create_app
from core.db import get_sessionmaker, session_scope
from core.models import FineTunedModel
from core.settings import Settings, get_settings

from .conftest import REGISTRY_CONTEXT, REGISTRY_GRADER, REGISTRY_MODEL, Server, assert_error, method


def test_health_ready_metrics(server: Server) -> None:
    with server.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ok", "database": "ok", "redis": "ok"}
        text = client.get("/metrics").text
    assert "# TYPE sppo_http_requests_total counter" in text
    assert 'route="/health",status="200"' in text
    assert 'sppo_jobs{status="queued"}' in text
    assert "org-" not in text and "ftjob-" not in text and "file-" not in text  # templates, not ids


def test_models_lists_registry_fixture_and_own_fine_tuned(
    server: Server, api: httpx.Client, upload: Callable[..., dict[str, Any]]
) -> None:
    models = api.get("/v1/models").json()
    assert models["object"] == "list"
    ids = [m["id"] for m in models["data"]]
    # both shipped fixtures, then the registry ("not-a-model" has no config.json, "config-only" no weights)
    assert ids == ["sppo-tiny", "sppo-tiny-long", REGISTRY_MODEL]
    assert models["data"][1]["context_length"] == 256  # the long-horizon fixture's positions
    registry_model = models["data"][2]
    assert registry_model["recommended_grader"] == REGISTRY_GRADER  # its sppo_grader.json
    assert registry_model["context_length"] == REGISTRY_CONTEXT
    assert all(m["object"] == "model" and m["owned_by"] == "system" for m in models["data"])

    body = {"model": "sppo-tiny", "training_file": upload()["id"], "method": method()}
    job = api.post("/v1/fine_tuning/jobs", json=body).json()
    name = f"ft:sppo-tiny:{job['organization_id']}::{job['id']}"
    with session_scope(server.db_url) as session:  # what the worker records when a job succeeds
        session.add(
            FineTunedModel(
                id=name,
                tenant_id=job["organization_id"],
                job_id=job["id"],
                base_model="sppo-tiny",
                adapter_uri="x",
            )
        )
    owned = api.get("/v1/models").json()["data"][-1]
    assert owned["id"] == name and owned["owned_by"] == job["organization_id"]
    with server.client(server.new_key()) as other:
        assert name not in [m["id"] for m in other.get("/v1/models").json()["data"]]


def test_invalid_json_body(api: httpx.Client) -> None:
    response = api.post(
        "/v1/fine_tuning/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert assert_error(response, 400)["code"] == "invalid_json"


def test_unknown_route_and_request_id(server: Server) -> None:
    with server.client(server.new_key()) as client:
        response = client.get("/v1/nothing-here", headers={"X-Request-ID": "trace-123"})
    assert_error(response, 404)
    assert response.headers["X-Request-ID"] == "trace-123"
    with server.client() as client:  # authentication comes first, even for a route that does not exist
        assert_error(client.get("/v1/nothing-here"), 401)
    with server.client() as client:
        generated = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers[
            "X-Request-ID"
        ]
    assert generated != "bad id\twith spaces" and len(generated) == 32


def test_unexpected_error_is_500_with_request_id(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    # Not entered as a context manager: no lifespan, so no re-dispatch loop on the default database.
    client = TestClient(app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR):
        response = client.get("/boom")
    error = assert_error(response, 500)
    request_id = response.headers["X-Request-ID"]
    assert request_id in error["message"]
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert any(request_id in record.getMessage() for record in caplog.records)


def test_ready_is_503_when_redis_is_down(tmp_path: Path) -> None:
    app = create_app()
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")  # type: ignore[arg-type]
    app.dependency_overrides[get_settings] = lambda: settings

    def session() -> Iterator[Session]:
        with get_sessionmaker(settings.db_url)() as s:
            yield s

    app.dependency_overrides[get_session] = session
    response = TestClient(app).get("/ready")
    assert response.status_code == 503
    assert response.json()["database"] == "ok" and response.json()["redis"].startswith("error")
