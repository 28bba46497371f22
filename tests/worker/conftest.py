"""A fresh migrated database per test (the reaper looks at every job, so it must not see other tests')."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.db import get_sessionmaker, upgrade_database
from app.models import Job, JobStatus, Tenant, new_id
from app.settings import Settings


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
