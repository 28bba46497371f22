"""Recovery of lost work against real databases (SQLite and PostgreSQL) and a real Redis broker."""

from collections.abc import Callable

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.dispatch import send_training_task
from app.models import Job, JobEvent, JobStatus, now
from app.services.reaper import broker_holds, reap_once
from app.settings import Settings
from worker.jobs import claim_job

S = JobStatus


def _job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def test_stale_running_job_is_requeued_with_the_next_attempt_and_dispatched(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    stale = make_job(
        status=S.running, attempt=1, worker_id="w:1", heartbeat_at=now() - 60, started_at=now() - 90
    )
    fresh = make_job(status=S.running, attempt=1, worker_id="w:2", heartbeat_at=now())
    report = reap_once(session, settings=settings)
    assert report.requeued == [stale]
    job = _job(session, stale)
    assert (job.status, job.attempt, job.worker_id) == (S.queued, 2, None)
    assert job.dispatched_at is not None  # sent again in the same round
    assert broker_holds(redis.Redis.from_url(str(settings.redis_url)), stale)
    assert _job(session, fresh).status == S.running
    message = session.scalars(select(JobEvent.message).where(JobEvent.job_id == stale)).one()
    assert "stopped responding" in message and "attempt 2 of 3" in message
    # The redelivered old message and the new one: only one claim wins.
    assert claim_job(session, job_id=stale, worker_id="w:3") is not None
    assert claim_job(session, job_id=stale, worker_id="w:4") is None


def test_job_fails_clearly_after_max_attempts(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    job_id = make_job(status=S.running, attempt=3, max_attempts=3, worker_id="w:1", heartbeat_at=now() - 60)
    assert reap_once(session, settings=settings).failed == [job_id]
    job = _job(session, job_id)
    assert job.status == S.failed and job.error_code == "worker_lost"
    assert "after 3 attempt(s)" in (job.error_message or "")


def test_queued_job_whose_message_was_lost_is_dispatched_again(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    client = redis.Redis.from_url(str(settings.redis_url))
    long_ago = now() - 600
    lost = make_job(dispatched_at=long_ago)
    held = make_job(dispatched_at=long_ago)
    assert send_training_task(settings, held)
    assert not broker_holds(client, lost)
    reap_once(session, settings=settings)
    assert (_job(session, lost).dispatched_at or 0) >= now() - 5
    assert broker_holds(client, lost)
    assert _job(session, held).dispatched_at == long_ago  # its message is still in the queue


def test_claim_takes_only_queued_jobs(session: Session, make_job: Callable[..., str]) -> None:
    cancelled = make_job(status=S.cancelled)
    paused = make_job(status=S.paused)
    assert claim_job(session, job_id=cancelled, worker_id="w") is None
    assert claim_job(session, job_id=paused, worker_id="w") is None
    queued = make_job()
    job = claim_job(session, job_id=queued, worker_id="w")
    assert job is not None and job.status == S.running and job.attempt == 1 and job.worker_id == "w"
