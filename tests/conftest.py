"""Shared fixtures: fresh databases on SQLite and PostgreSQL, an isolated Redis database, a live API server.

Nothing is mocked: the DB tests run against both real backends, dispatch is checked in a real Redis, and
the HTTP tests talk to `uvicorn app.main:app` in a subprocess.
"""

import asyncio
import contextlib
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from cli.stack import stop

if TYPE_CHECKING:
    from worker.engine.fixtures import Fixture

POSTGRES_URL = os.environ.get("SPPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST_URL = os.environ.get("SPPO_TEST_REDIS_URL", "redis://127.0.0.1:6379")


T = TypeVar("T")


def run_in_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` in a thread of its own: the session's shared Playwright browser (sync API) keeps an
    event loop running on the main thread, inside which asyncio.run refuses to start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="session")
def tiny() -> "Fixture":
    """The shipped `sppo-tiny` model and data."""
    import torch

    from worker.engine.fixtures import ensure_fixture

    fixture = ensure_fixture()
    # then one thread: on a shared 2-core machine, two OpenMP threads per process thrash under load
    torch.set_num_threads(1)
    return fixture


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for the DB tests at {POSTGRES_URL}: {exc}")
    finally:
        engine.dispose()
    return POSTGRES_URL


def _create_postgres_database(server_url: str) -> str:
    name = f"sppo_test_{secrets.token_hex(6)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(server_url: str, url: str) -> None:
    from core.db import get_engine, get_sessionmaker

    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    name = sa.make_url(url).database
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def new_postgres_database(postgres_server_url: str) -> Iterator[Callable[[], str]]:
    """Creates throwaway PostgreSQL databases on demand; all of them are dropped when the session ends."""
    created: list[str] = []

    def create() -> str:
        created.append(_create_postgres_database(postgres_server_url))
        return created[-1]

    yield create
    for url in created:
        _drop_postgres_database(postgres_server_url, url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty (unmigrated) database URL on each backend; dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("postgres_server_url")
    url = _create_postgres_database(server)
    try:
        yield url
    finally:
        _drop_postgres_database(server, url)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database per backend, shared by the session's DB tests (they create their own tenants)."""
    from core.db import upgrade_database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'sppo.db'}"
        upgrade_database(url)
        yield url
        return
    server = request.getfixturevalue("postgres_server_url")
    url = _create_postgres_database(server)
    try:
        upgrade_database(url)
        yield url
    finally:
        _drop_postgres_database(server, url)


@contextlib.contextmanager
def _claim_redis_database(purpose: str) -> Iterator[str]:
    """A Redis database (1-15) nobody else uses, claimed with a marker key and flushed at the end."""
    import redis

    run_id = secrets.token_hex(8)
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_HOST_URL}/{db}")
        if client.set("sppo-test-run", run_id, nx=True, ex=3600) and client.dbsize() == 1:
            break
        if client.get("sppo-test-run") == run_id.encode():
            client.delete("sppo-test-run")
    else:
        pytest.fail(f"no free Redis database (1-15) for {purpose}")
    try:
        yield f"{REDIS_HOST_URL}/{db}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of its own for this test run."""
    with _claim_redis_database("the test run") as url:
        yield url


@pytest.fixture(scope="session")
def reaper_redis_url() -> Iterator[str]:
    """A Redis database for tests that run the reaper in-process: the API servers of other tests reap in
    `redis_url` every few seconds, and a round of theirs holding the reaper lock would skip the test's."""
    with _claim_redis_database("the reaper tests") as url:
        yield url


@pytest.fixture(scope="session")
def stack_redis_url() -> Iterator[str]:
    """A Redis database for the end-to-end stack alone: its worker consumes the `training` queue, which
    must not take messages other tests put there."""
    with _claim_redis_database("the end-to-end stack") as url:
        yield url


class RedisServer:
    """A redis-server of one test's own (no persistence), which the test may stop and start again empty."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            except redis.RedisError:
                assert time.monotonic() < deadline, self._log.read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL, as a crash or a pulled cable would: no clean goodbye to connected clients."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)


def free_port() -> int:
    """A local TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mlflow_server(root: Path, port: int) -> Iterator[str]:
    """A real `mlflow server` (the `dev` extra's mlflow) on `port`: runs in a SQLite file, artifacts proxied
    into `root`; yields its URL once it answers /health."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "mlflow.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop(process, 15)


def mlflow_metrics(url: str, experiment: str) -> dict[str, dict[int, float]]:
    """Every metric of the experiment's one run, by name and step, read back through MLflow's REST API."""
    api = f"{url}/api/2.0/mlflow"
    experiment_id = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": experiment}).json()
    found = httpx.post(
        f"{api}/runs/search", json={"experiment_ids": [experiment_id["experiment"]["experiment_id"]]}
    ).json()
    [run] = found["runs"]
    series: dict[str, dict[int, float]] = {}
    for metric in run["data"].get("metrics", []):
        history = httpx.get(
            f"{api}/metrics/get-history",
            params={"run_id": run["info"]["run_id"], "metric_key": metric["key"]},
        ).json()
        series[metric["key"]] = {point.get("step", 0): point["value"] for point in history["metrics"]}
    return series


def wandb_history(files_dir: Path) -> list[dict[str, Any]]:
    """The history rows (`run.log` calls) of the one offline W&B run under `files_dir`, from its `.wandb`
    file: LevelDB's log format (32 KiB blocks of checksummed chunks) of `wandb_internal.proto` Records."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(files_dir.rglob("*.wandb"))
    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", path
    position, pending, rows = 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                )
    return rows
