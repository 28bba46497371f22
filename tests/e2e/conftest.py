"""The whole service for end-to-end tests: real uvicorn, real Celery worker subprocesses, Redis, PostgreSQL.

One stack per test session (one API, one worker at a time) with short heartbeat and reaper periods, so
crash recovery is seen within seconds. The `sppo-tiny` fixture model is the one shipped with the engine.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.services.keys import create_key
from core.db import session_scope, upgrade_database
from tests.app.conftest import UVICORN
from tests.conftest import free_port
from worker.engine.fixtures import FIXTURE_GRADER, Fixture

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_S, LEASE_S = 1, 6  # a SIGKILLed worker's job is requeued ~6-7 s later
FINISHED = {"succeeded", "failed", "cancelled"}


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


@dataclass
class Stack:
    base_url: str
    db_url: str
    redis_url: str
    data_dir: Path
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start_worker(self, queues: str = "training,evaluation", **env: str) -> subprocess.Popen[bytes]:
        """A `sppo worker` on `queues` (`env`: extra variables); returns once Celery says it is ready."""
        log = self.log_dir / f"worker-{len(self.workers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "sppo"), "worker", "--loglevel", "INFO",
                 "--queues", queues],
                cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.workers.append(process)
        deadline = time.monotonic() + 90
        while "ready." not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        return process

    @property
    def worker(self) -> subprocess.Popen[bytes]:
        return self.workers[-1]

    def stop_worker(self) -> None:
        """SIGTERM: Celery's warm shutdown, as a container stop or Ctrl-C of `sppo run` sends."""
        self.worker.send_signal(signal.SIGTERM)
        self.worker.wait(timeout=600)

    def kill_worker(self) -> None:
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=10)

    def new_key(self) -> str:
        with session_scope(self.db_url) as session:
            return create_key(session, tenant_name=f"tenant-{secrets.token_hex(4)}").plaintext

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny: Fixture,
    new_postgres_database: Callable[[], str],
    stack_redis_url: str,
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("sppo-e2e")
    (data_dir / "logs").mkdir()
    registry = data_dir / "registry"
    (registry / "broken" / "tiny").mkdir(parents=True)  # a config.json only: not offered (no weights)
    (registry / "broken" / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    db_url = new_postgres_database()  # dropped at the end of the session, after this stack stops
    upgrade_database(db_url)
    port, models_port, mlflow_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "SPPO_DATA_DIR": str(data_dir),
        "SPPO_DATABASE_URL": db_url,
        "SPPO_REDIS_URL": stack_redis_url,
        "SPPO_MODEL_REGISTRY_DIR": str(registry),
        "SPPO_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "SPPO_HEARTBEAT_LEASE_S": str(LEASE_S),
        "SPPO_REAPER_INTERVAL_S": "1",
        "SPPO_DEVICE": "cpu",
        "SPPO_TRAINING_DEVICE_COUNTS": "[1, 2]",  # tests/e2e/test_multi_device.py starts a 2-device worker
        "OMP_NUM_THREADS": "1",  # on a shared 2-core machine more threads per process thrash under load
        "SPPO_INFERENCE_URL": f"http://127.0.0.1:{models_port}",
        "SPPO_INFERENCE_PORT": str(models_port),
        "SPPO_INFERENCE_SECRET": secrets.token_urlsafe(32),  # the API's and the workers' graders' key
        # trackers: W&B runs as files in the data dir; MLflow on a port a test starts its server on
        "SPPO_WANDB_MODE": "offline",
        "SPPO_MLFLOW_TRACKING_URIS": json.dumps([f"http://127.0.0.1:{mlflow_port}"]),
    }
    models_log = data_dir / "logs" / "models.log"
    with models_log.open("wb") as out:
        models = subprocess.Popen(
            [str(Path(sys.executable).parent / "sppo"), "serve-models"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    api_log = data_dir / "logs" / "api.log"
    with api_log.open("wb") as out:
        api = subprocess.Popen(
            [*UVICORN, "--port", str(port), "--log-level", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    stack = Stack(base_url=base_url, db_url=db_url, redis_url=stack_redis_url, data_dir=data_dir, env=env)
    try:
        _wait_http(f"{base_url}/health", api, api_log)
        _wait_http(f"http://127.0.0.1:{models_port}/health", models, models_log, timeout=300)
        stack.start_worker()
        yield stack
    finally:
        for process in [*stack.workers, api, models]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def key(stack: Stack) -> str:
    return stack.new_key()


@pytest.fixture
def api(stack: Stack, key: str) -> Iterator[httpx.Client]:
    with stack.client(key) as client:
        yield client


def jsonl(path: Path, start: int, count: int) -> bytes:
    return b"".join(path.read_bytes().splitlines(keepends=True)[start : start + count])


@pytest.fixture
def upload(api: httpx.Client) -> Callable[[bytes, str], str]:
    def _upload(content: bytes, name: str = "train.jsonl") -> str:
        response = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, content)})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    return _upload


def sppo_method(**hyperparameters: Any) -> dict[str, Any]:
    """An SPPO job on the fixture task; small and fast unless told otherwise."""
    hyper = {"n_epochs": 1, "batch_size": 8, "eval_samples": 2, "checkpoint_interval": 2, **hyperparameters}
    return {
        "type": "reinforcement",
        "reinforcement": {"algorithm": "sppo", "grader": FIXTURE_GRADER, "hyperparameters": hyper},
    }


def wait_for(
    api: httpx.Client, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 900
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/v1/fine_tuning/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if until(job):
            return dict(job)
        assert time.monotonic() < deadline, f"timed out waiting on job {job_id}: {job}"
        time.sleep(0.3)


def metric_steps(api: httpx.Client, job_id: str) -> list[int]:
    series = api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"limit": 10000}).json()
    return [point["step"] for point in series["data"]]


def events(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """All events, oldest first."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
        found += page["data"]
        if not page["has_more"]:
            return found[::-1]
        params["after"] = page["data"][-1]["id"]
