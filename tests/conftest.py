"""Shared fixtures: fresh databases on SQLite and PostgreSQL, an isolated Redis database, a live API server.

Nothing is mocked: the DB tests run against both real backends, dispatch is checked in a real Redis, and
the HTTP tests talk to `uvicorn app.main:app` in a subprocess.
"""

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import sqlalchemy as sa

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
    from app.db import get_engine, get_sessionmaker

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
    from app.db import upgrade_database

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
