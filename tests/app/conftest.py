"""A live API server (`uvicorn app.main:app` in a subprocess on a free port) and helpers to talk to it."""

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.services.keys import authenticate, create_key
from cli.stack import stop
from core.db import session_scope
from core.models import Checkpoint, FineTunedModel, Job
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MAX_UPLOAD_BYTES = 256 * 1024
MLFLOW_URIS = ["https://mlflow.example.com", "http://127.0.0.1:5999/"]
MAX_JOBS = 3
BODY_TIMEOUT_S = 2  # a slow body is cut off after this (plus its size at 64 KiB/s)
HEADER_TIMEOUT_S = 2  # a request head must be complete this long after it started
REGISTRY_MODEL = "acme/tiny-llama"
DEVICE_COUNTS = [1, 2]  # what the test deployment's workers offer
# The API as `sppo serve` runs it: with the protocol that bounds request heads.
UVICORN = [sys.executable, "-m", "uvicorn", "app.main:app", "--http", "app.http_protocol:HeadTimeoutProtocol"]

ITEM = '{"messages": [{"role": "user", "content": "What is 2+3?"}], "answer": "5"}\n'
GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


# What the registry model declares it is graded with (its sppo_grader.json), and its context length.
REGISTRY_GRADER = {
    "type": "regex",
    "name": "final_answer",
    "input": "{{sample.output_text}}",
    "pattern": r"####\s*(-?\d+)",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
REGISTRY_CONTEXT = 64


def method(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": hyperparameters}}


@dataclass
class Server:
    base_url: str
    db_url: str
    redis_url: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def new_key(self, tenant: str | None = None) -> str:
        """A key for a new tenant (each test gets its own, so quotas and listings never interfere)."""
        name = tenant or f"tenant-{os.urandom(4).hex()}"
        with session_scope(self.db_url) as session:
            return create_key(session, tenant_name=name).plaintext

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


@contextlib.contextmanager
def run_api_server(
    data_dir: Path,
    *,
    db_url: str,
    redis_url: str,
    env: dict[str, str],
    log_level: str = "info",
    start_timeout_s: float = 30,
) -> Iterator[Server]:
    """`uvicorn app.main:app` on a free port with these settings (the database must be migrated)."""
    port = free_port()
    full_env = {
        **os.environ,
        "SPPO_DATA_DIR": str(data_dir),
        "SPPO_DATABASE_URL": db_url,
        "SPPO_REDIS_URL": redis_url,
        **env,
    }
    log_path = data_dir / f"server-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*UVICORN, "--port", str(port), "--log-level", log_level],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"API server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield Server(
            base_url=base_url, db_url=db_url, redis_url=redis_url, data_dir=data_dir, process=process
        )
    finally:
        stop(process, 10)


def migrate(data_dir: Path, db_url: str) -> None:
    """Exactly the documented deployment: `alembic upgrade head` before the server starts."""
    env = {**os.environ, "SPPO_DATA_DIR": str(data_dir), "SPPO_DATABASE_URL": db_url}
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("sppo-data")
    registry = data_dir / "registry"
    model_dir = registry / REGISTRY_MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": REGISTRY_CONTEXT}))
    (model_dir / "model.safetensors").write_bytes(b"")
    (model_dir / "tokenizer.json").write_text("{}")
    (model_dir / "sppo_grader.json").write_text(json.dumps(REGISTRY_GRADER))
    (model_dir / "sppo_defaults.json").write_text(json.dumps({"max_response_tokens": 32}))
    (registry / "not-a-model").mkdir()  # no config.json: must not be listed
    (registry / "acme" / "config-only").mkdir()  # no weights or tokenizer: must not be listed either
    (registry / "acme" / "config-only" / "config.json").write_text("{}")
    db_url = f"sqlite:///{data_dir / 'api.db'}"
    migrate(data_dir, db_url)
    env = {
        "SPPO_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SPPO_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "SPPO_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "SPPO_MAX_CONCURRENT_JOBS_PER_TENANT": str(MAX_JOBS),
        "SPPO_MODEL_REGISTRY_DIR": str(registry),
        "SPPO_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",  # no model server listens there
        "SPPO_INFERENCE_MAX_REQUEST_BYTES": str(MAX_UPLOAD_BYTES),
        "SPPO_TRAINING_DEVICE_COUNTS": json.dumps(DEVICE_COUNTS),
        "SPPO_MLFLOW_TRACKING_URIS": json.dumps(MLFLOW_URIS),  # nothing listens: the API only checks them
    }
    with run_api_server(data_dir, db_url=db_url, redis_url=redis_url, env=env) as running:
        yield running


@pytest.fixture
def key(server: Server) -> str:
    return server.new_key()


@pytest.fixture
def api(server: Server, key: str) -> Iterator[httpx.Client]:
    with server.client(key) as client:
        yield client


@pytest.fixture
def upload(api: httpx.Client) -> Callable[..., dict[str, Any]]:
    def _upload(content: str = ITEM * 8, filename: str = "train.jsonl") -> dict[str, Any]:
        response = api.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": (filename, content.encode())}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    return _upload


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of a finished Server-Sent Events response, comments and ids left out."""
    events = []
    for block in response.text.split("\n\n"):
        lines = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body with the expected status (and param, when given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def add_fine_tuned(
    server: Server, key: str, adapter_config: dict[str, Any] | None = None
) -> tuple[str, Path]:
    """A fine-tuned model row of the key's tenant, with adapter files under the data directory."""
    with session_scope(server.db_url) as session:
        tenant = authenticate(session, authorization=f"Bearer {key}")
        job = Job(tenant_id=tenant.id, model="sppo-tiny", training_file="file-x", seed=0, status="succeeded")
        session.add(job)
        session.flush()
        adapter = server.data_dir / "jobs" / job.id / "run" / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps(adapter_config or {}))
        model_id = f"ft:sppo-tiny:{tenant.id}::{job.id}"
        session.add(FineTunedModel(id=model_id, tenant_id=tenant.id, job_id=job.id, base_model="sppo-tiny",
                                   adapter_uri=str(adapter.relative_to(server.data_dir))))  # fmt: skip
        session.commit()
    return model_id, adapter


def add_checkpoint(
    server: Server, model_id: str, adapter_config: dict[str, Any] | None = None
) -> tuple[str, Path]:
    """A step-10 checkpoint of the fine-tuned model's job, with adapter files under the data directory."""
    job_id = model_id.rsplit(":", 1)[-1]
    adapter = server.data_dir / "jobs" / job_id / "run" / "checkpoints" / "step-000010" / "adapter"
    adapter.mkdir(parents=True)
    if adapter_config is not None:
        (adapter / "adapter_config.json").write_text(json.dumps(adapter_config))
    with session_scope(server.db_url) as session:
        name = f"{model_id}:ckpt-step-10"
        checkpoint = Checkpoint(job_id=job_id, step_number=10, fine_tuned_model_checkpoint=name,
                                uri=str(adapter.relative_to(server.data_dir)))  # fmt: skip
        session.add(checkpoint)
        session.commit()
        return checkpoint.id, adapter
