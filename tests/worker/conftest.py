"""A fresh migrated database per test (the reaper looks at every job, so it must not see other tests')."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
from sqlalchemy.orm import Session

from core.db import get_sessionmaker, upgrade_database
from core.models import Job, JobStatus, Tenant, new_id
from core.settings import Settings
from core.storage import artifact_store
from worker.alarms import AlarmBook
from worker.jobs import claim_job
from worker.reporting import JobReporter


class MakeReporter(Protocol):
    def __call__(
        self, job_id: str, *, alarms: AlarmBook | None = None, db_retry_s: float | None = None
    ) -> JobReporter: ...


@pytest.fixture
def fresh_db_url(empty_db_url: str) -> str:
    upgrade_database(empty_db_url)
    return empty_db_url


@pytest.fixture
def settings(fresh_db_url: str, reaper_redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=fresh_db_url,  # type: ignore[arg-type]
        redis_url=reaper_redis_url,  # type: ignore[arg-type]
        heartbeat_interval_s=0.2,
        heartbeat_lease_s=10,
    )


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    with get_sessionmaker(settings.db_url)() as session:
        yield session


@pytest.fixture
def make_job(session: Session) -> Callable[..., str]:
    tenant = Tenant(name=f"tenant-{new_id('t')}")
    session.add(tenant)
    session.commit()

    def _make(**values: Any) -> str:
        job = Job(tenant_id=tenant.id, model="sppo-tiny", training_file="file-x", seed=0, **values)
        job.status = values.get("status", JobStatus.queued)
        session.add(job)
        session.commit()
        return job.id

    return _make


@pytest.fixture
def job_id(session: Session, make_job: Callable[..., str]) -> str:
    """A job claimed by worker "w:1", the worker every reporter and lease of these tests runs as."""
    job_id = make_job()
    assert claim_job(session, job_id=job_id, worker_id="w:1") is not None
    return job_id


@pytest.fixture
def reporter_for(settings: Settings) -> Iterator[MakeReporter]:
    """JobReporters of worker "w:1" for given jobs, closed after the test (alarms and DB retry deadline as
    the worker's unless given)."""
    made: list[JobReporter] = []

    def _make(
        job_id: str, *, alarms: AlarmBook | None = None, db_retry_s: float | None = None
    ) -> JobReporter:
        made.append(
            JobReporter(
                job_id=job_id,
                worker_id="w:1",
                model_name=f"ft:sppo-tiny:t::{job_id}",
                store=artifact_store(settings),
                sessions=get_sessionmaker(settings.db_url),
                redis_client=redis.Redis.from_url(str(settings.redis_url)),
                heartbeat_interval_s=settings.heartbeat_interval_s,
                db_retry_s=settings.db_retry_s if db_retry_s is None else db_retry_s,
                alarms=alarms,
            )
        )
        return made[-1]

    yield _make
    for each in made:
        each.close()
