"""Worker writes survive dropped PostgreSQL connections (pg_terminate_backend, as a restart or failover)."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core.db import get_sessionmaker
from core.models import MetricPoint
from core.settings import Settings
from tests.worker.conftest import MakeReporter
from worker.dbretry import retrying
from worker.engine.callbacks import StartInfo
from worker.jobs import claim_job

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_settings(settings: Settings) -> Settings:
    if not settings.db_url.startswith("postgresql"):
        pytest.skip("terminating backends is a PostgreSQL fault")
    return settings


def terminate_backends(url: str) -> int:
    """End every other connection to the database of `url`; the number ended."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        ended = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    engine.dispose()
    return int(ended)


@contextlib.contextmanager
def terminating(url: str, every_s: float = 0.25) -> Iterator[list[int]]:
    """Terminates the database's other backends every `every_s` from a thread while the block runs."""
    stop = threading.Event()
    ended: list[int] = []

    def loop() -> None:
        while not stop.wait(every_s):
            ended.append(terminate_backends(url))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield ended
    finally:
        stop.set()
        thread.join()


def test_retrying_runs_the_work_again_on_a_new_connection(pg_settings: Settings) -> None:
    sessions = get_sessionmaker(pg_settings.db_url)
    tries: list[int] = []

    def work() -> int:
        tries.append(1)
        with sessions() as session:
            session.execute(sa.text("SELECT 1"))  # the unit of work holds its connection
            if len(tries) == 1:
                terminate_backends(pg_settings.db_url)  # the connection dies inside the unit of work
            return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    assert retrying(work, what="test", deadline_s=10) > 0
    assert len(tries) == 2


def test_retrying_gives_up_at_its_deadline_and_never_retries_a_statement_error(
    pg_settings: Settings,
) -> None:
    def dropped() -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    started = time.monotonic()
    with pytest.raises(OperationalError):
        retrying(dropped, what="test", deadline_s=0.5)
    assert 0.3 < time.monotonic() - started < 2.5
    tries: list[int] = []

    def conflict() -> None:
        tries.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        retrying(conflict, what="test", deadline_s=5)
    assert tries == [1]


def test_reporter_records_every_step_once_while_backends_are_terminated(
    pg_settings: Settings,
    session: Session,
    make_job: Callable[..., str],
    reporter_for: MakeReporter,
    tmp_path: Path,
) -> None:
    job_id = make_job()
    assert claim_job(session, job_id=job_id, worker_id="w:1") is not None
    session.close()
    reporter = reporter_for(job_id, db_retry_s=30)
    try:
        with terminating(pg_settings.db_url) as ended:
            reporter.on_start(StartInfo(total_steps=40, start_step=0, output_dir=tmp_path))
            for step in range(1, 41):
                reporter.on_step(step, {"m": float(step)})
                assert reporter.flush()  # a flush per step: many writes for the terminations to hit
                time.sleep(0.05)
    finally:
        reporter.close()
    assert sum(ended) > 0  # connections were really ended under the reporter
    steps = session.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id)).all()
    assert sorted(steps) == list(range(1, 41))
