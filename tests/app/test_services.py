"""Service rules against both real databases (SQLite and PostgreSQL): transitions, listing, dispatch."""

import os
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import select

from app.dispatch import dispatch_pending_jobs
from app.errors import AuthenticationError
from app.schemas.jobs import JobCreate
from app.services import jobs
from app.services.keys import authenticate, create_key, revoke_key
from core.db import session_scope
from core.lifecycle import transition
from core.models import File, Job, JobEvent, JobStatus, Tenant
from core.queues import TRAIN_QUEUE, broker_lists
from core.settings import Settings

from .conftest import method

S = JobStatus


def _settings(db_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=SecretStr(db_url), redis_url=redis_url, data_dir=tmp_path)  # type: ignore[arg-type]


def _tenant_and_file(db_url: str) -> tuple[Tenant, File]:
    with session_scope(db_url) as session:
        tenant = Tenant(name=f"svc-{os.urandom(4).hex()}")
        session.add(tenant)
        session.flush()
        file = File(
            tenant_id=tenant.id,
            filename="t.jsonl",
            purpose="fine-tune",
            bytes=1,
            sha256="0" * 64,
            storage_uri="files/x.jsonl",
            item_fields=["answer", "messages"],
        )
        session.add(file)
    return tenant, file


def _create(db_url: str, settings: Settings, tenant: Tenant, file: File, **extra: object) -> Job:
    request = JobCreate.model_validate(
        {"model": "sppo-tiny", "training_file": file.id, "method": method(), **extra}
    )
    with session_scope(db_url) as session:
        return jobs.create_job(session, settings=settings, tenant=tenant, request=request)


def test_guarded_transitions_have_one_winner(db_url: str, redis_url: str, tmp_path: Path) -> None:
    tenant, file = _tenant_and_file(db_url)
    job = _create(db_url, _settings(db_url, redis_url, tmp_path), tenant, file)
    with session_scope(db_url) as session:
        assert transition(
            session, job_id=job.id, expected=(S.queued,), to=S.running, message="claimed", worker_id="w1"
        )
    with session_scope(db_url) as session:  # a second worker claiming the same job loses
        assert not transition(session, job_id=job.id, expected=(S.queued,), to=S.running, message="claimed")
    with session_scope(db_url) as session:
        assert transition(session, job_id=job.id, expected=(S.running,), to=S.succeeded, message="done")
        stored = session.get(Job, job.id)
        assert stored is not None and stored.status == "succeeded" and stored.worker_id == "w1"
        assert stored.started_at is not None and stored.finished_at is not None
        events = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
        )
        assert list(events) == ["Created fine-tuning job", "claimed", "done"]


def test_metadata_filter_and_pagination(db_url: str, redis_url: str, tmp_path: Path) -> None:
    tenant, file = _tenant_and_file(db_url)
    settings = _settings(db_url, redis_url, tmp_path)
    settings.max_concurrent_jobs_per_tenant = 10
    created = [_create(db_url, settings, tenant, file, metadata={"k": str(i % 2)}) for i in range(5)]
    with session_scope(db_url) as session:
        seen: list[str] = []
        after = None
        while True:
            page, has_more = jobs.list_jobs(session, tenant=tenant, after=after, limit=2, metadata={})
            seen += [j.id for j in page]
            if not has_more:
                break
            after = page[-1].id
        assert sorted(seen) == sorted(j.id for j in created) and len(seen) == len(set(seen))
        odd, _ = jobs.list_jobs(session, tenant=tenant, after=None, limit=10, metadata={"k": "1"})
        assert sorted(j.id for j in odd) == sorted(j.id for j in created[1::2])


def test_broker_down_keeps_the_job_queued_and_redispatches(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    tenant, file = _tenant_and_file(db_url)
    down = _settings(db_url, "redis://127.0.0.1:1/0", tmp_path)
    job = _create(db_url, down, tenant, file)
    with session_scope(db_url) as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.status == "queued" and stored.dispatched_at is None
        levels = session.scalars(select(JobEvent.level).where(JobEvent.job_id == job.id)).all()
        assert "warn" in levels
    with session_scope(db_url) as session:
        assert dispatch_pending_jobs(session, settings=_settings(db_url, redis_url, tmp_path)) >= 1
        stored = session.get(Job, job.id)
        assert stored is not None and stored.dispatched_at is not None
    # The message headers carry the task's args in `argsrepr`.
    assert any(
        job.id.encode() in raw
        for key in broker_lists(TRAIN_QUEUE)
        for raw in redis.Redis.from_url(redis_url).lrange(key, 0, -1)
    )


def test_revoked_key_fails_authentication(db_url: str) -> None:
    with session_scope(db_url) as session:
        created = create_key(session, tenant_name=f"k-{os.urandom(4).hex()}")
        assert authenticate(session, authorization=f"Bearer {created.plaintext}").id == created.tenant.id
        revoke_key(session, key_id=created.api_key.id)
        with pytest.raises(AuthenticationError):
            authenticate(session, authorization=f"Bearer {created.plaintext}")
