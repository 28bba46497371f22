"""A database connection dropped while a request uses it (`pg_terminate_backend`, as in a restart or a
failover): a read runs again on a fresh connection and answers; a write answers 503 with Retry-After.

To drop the connection at a known point, the test locks the jobs table, so the API's request waits on
the lock inside its query; it terminates that backend, then releases the lock.
"""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from app.services.reaper import LOCK_NAME
from core.db import session_scope, upgrade_database
from core.models import ApiKey, Job, Tenant
from tests.app.conftest import Server, method, run_api_server

pytestmark = pytest.mark.postgres
API_APP = "sppo-api-db-drops"  # libpq's PGAPPNAME: how the test finds the API's connections
# The API's only connection waiting on a lock is the request's (the reaper is idle). Not matched by query
# text: under the extended protocol a statement waits on its locks while being parsed, before
# pg_stat_activity shows it.
WAITING = "SELECT pid FROM pg_stat_activity WHERE application_name = :app AND wait_event_type = 'Lock'"
REDIS_PREFIX = "sppo-db-drops"  # its own reaper lock: another test's API reaping must not skip its round


@pytest.fixture
def pg_server(tmp_path: Path, new_postgres_database: Callable[[], str], redis_url: str) -> Iterator[Server]:
    db_url = new_postgres_database()
    upgrade_database(db_url)
    with session_scope(db_url) as session:  # the reaper's first round dispatches it
        tenant = Tenant(name="reaper-marker")
        session.add(tenant)
        session.flush()
        marker = _queued_job(session, tenant.id)
    # one reaper round, at start-up, then none: no reaper query on the jobs table while a test locks it
    env = {"PGAPPNAME": API_APP, "SPPO_REAPER_INTERVAL_S": "3600", "SPPO_REDIS_PREFIX": REDIS_PREFIX}
    with run_api_server(tmp_path, db_url=db_url, redis_url=redis_url, env=env) as server:
        _wait_for_the_first_reaper_round(server, marker)
        yield server


def _queued_job(session: sa.orm.Session, tenant_id: str) -> str:
    job = Job(tenant_id=tenant_id, model="sppo-tiny", training_file="file-x", seed=0, method=method())
    session.add(job)
    session.flush()
    return job.id


def _wait_for_the_first_reaper_round(server: Server, marker: str) -> None:
    """Until the start-up round has dispatched the marker job and released its lock: on a slow machine it
    may still be querying the jobs table when the test locks it."""
    lock = redis.Redis.from_url(server.redis_url)
    deadline = time.monotonic() + 60
    while True:
        with session_scope(server.db_url) as session:
            dispatched = session.get_one(Job, marker).dispatched_at is not None
        if dispatched and not lock.exists(f"{REDIS_PREFIX}:{LOCK_NAME}"):
            return
        assert time.monotonic() < deadline, "the API's first reaper round never finished"
        time.sleep(0.05)


def _job(server: Server) -> str:
    with session_scope(server.db_url) as session:
        return _queued_job(session, session.scalars(sa.select(ApiKey.tenant_id)).one())


def _request_with_its_connection_dropped(
    server: Server, call: Callable[[], httpx.Response]
) -> httpx.Response:
    engine = sa.create_engine(server.db_url, poolclass=sa.pool.NullPool)
    result: list[httpx.Response] = []
    try:
        with engine.connect() as locker, engine.connect() as killer:
            locker.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            thread = threading.Thread(target=lambda: result.append(call()))
            thread.start()
            deadline = time.monotonic() + 20
            while not (pids := killer.execute(sa.text(WAITING), {"app": API_APP}).scalars().all()):
                assert time.monotonic() < deadline, (
                    f"the request never waited on the lock (answered: {result})"
                )
                time.sleep(0.05)
            killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
            killer.commit()
            locker.rollback()  # releases the lock: a retried read goes through
            thread.join(timeout=20)
    finally:
        engine.dispose()
    return result[0]


def test_a_read_whose_connection_is_dropped_is_answered_and_a_write_gets_503(pg_server: Server) -> None:
    key = pg_server.new_key()
    job_id = _job(pg_server)
    with pg_server.client(key) as api:
        read = _request_with_its_connection_dropped(
            pg_server, lambda: api.get(f"/v1/fine_tuning/jobs/{job_id}")
        )
        assert read.status_code == 200, read.text
        assert read.json()["id"] == job_id
        write = _request_with_its_connection_dropped(
            pg_server, lambda: api.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
        )
        assert write.status_code == 503, write.text
        assert write.headers["Retry-After"] == "1"
        assert write.json()["error"]["code"] == "database_unavailable"
        assert api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"  # nothing half-done
