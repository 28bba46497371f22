"""The job lease (worker/lease.py) against the real PostgreSQL and Redis: the heartbeat, guarded writes,
the lost lease, the pause request and the control poll."""

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.services.reaper import reap_once
from core.db import get_sessionmaker
from core.lifecycle import add_event, transition
from core.models import Job, JobEvent, JobStatus, now
from core.queues import control_key
from core.settings import Settings
from worker.jobs import claim_job
from worker.lease import CONTROL_POLL_S, SHUTDOWN, JobLease

S = JobStatus
Lease = Callable[..., JobLease]


@pytest.fixture
def lease(settings: Settings, job_id: str) -> Iterator[Lease]:
    made: list[JobLease] = []

    def _make(heartbeat_interval_s: float = 0.2) -> JobLease:
        made.append(
            JobLease(
                job_id=job_id,
                worker_id="w:1",
                sessions=get_sessionmaker(settings.db_url),
                redis_client=redis.Redis.from_url(str(settings.redis_url)),
                heartbeat_interval_s=heartbeat_interval_s,
                db_retry_s=settings.db_retry_s,
            )
        )
        return made[-1]

    yield _make
    for each in made:
        each.close()


def _job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def _events(session: Session, job_id: str) -> list[str]:
    return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all())


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_heartbeat_renews_the_row_while_nothing_else_writes(
    session: Session, job_id: str, lease: Lease
) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now() - 60))
    session.commit()
    lease()
    _wait_for(lambda: (_job(session, job_id).heartbeat_at or 0) >= now() - 1)


def test_a_write_beats_and_writes_columns_and_work_in_one_transaction(
    session: Session, job_id: str, lease: Lease
) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now() - 60))
    session.commit()
    each = lease(heartbeat_interval_s=60)  # no beat during the test: the write alone renews the row
    assert each.write(lambda s: add_event(s, job_id=job_id, message="hello"), current_step=3)
    job = _job(session, job_id)
    assert job.current_step == 3 and (job.heartbeat_at or 0) >= now() - 1
    assert "hello" in _events(session, job_id)


def test_a_job_taken_over_by_another_worker_is_lost_for_good(
    settings: Settings, session: Session, job_id: str, lease: Lease
) -> None:
    each = lease(heartbeat_interval_s=60)
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now() - 60))
    session.commit()
    assert reap_once(session, settings=settings).requeued == [job_id]
    assert claim_job(session, job_id=job_id, worker_id="w:2") is not None

    assert not each.write(lambda s: add_event(s, job_id=job_id, message="stale"), current_step=7)
    assert each.lost and each.control() == "cancel"
    job = _job(session, job_id)
    assert (job.worker_id, job.current_step) == ("w:2", 0) and "stale" not in _events(session, job_id)
    # Even were the row to name this worker again, a lost lease writes nothing more.
    session.execute(update(Job).where(Job.id == job_id).values(worker_id="w:1"))
    session.commit()
    assert not each.write(lambda s: add_event(s, job_id=job_id, message="later"))
    assert "later" not in _events(session, job_id)


def test_a_cancel_in_the_db_alone_reaches_control_through_the_heartbeat(
    session: Session, job_id: str, lease: Lease
) -> None:
    each = lease()
    assert each.control() == "continue"
    assert transition(session, job_id=job_id, expected=(S.running,), to=S.cancelled, message="cancel")
    session.commit()
    _wait_for(lambda: each.control() == "cancel")
    assert each.lost


def test_the_pause_request_in_the_row_is_read_by_the_heartbeat(
    session: Session, job_id: str, lease: Lease
) -> None:
    each = lease()
    assert not each.pause_requested and each.control() == "continue"
    session.execute(update(Job).where(Job.id == job_id).values(pause_requested_at=now()))
    session.commit()
    _wait_for(lambda: each.pause_requested)
    assert each.control() == "pause"  # with no control key in Redis


def test_the_control_key_is_read_at_most_every_poll_interval(
    settings: Settings, job_id: str, lease: Lease
) -> None:
    client = redis.Redis.from_url(str(settings.redis_url))
    each = lease(heartbeat_interval_s=60)
    read_at = time.monotonic()
    assert each.control() == "continue"
    client.set(control_key(job_id), "cancel")
    answer = each.control()
    if time.monotonic() - read_at < CONTROL_POLL_S:  # a stalled test process may have outlived the interval
        assert answer == "continue"  # the answer read just now still stands
    time.sleep(0.6)
    assert each.control() == "cancel" and not each.lost  # Redis says cancel; the row is still ours
    client.set(control_key(job_id), "pause")
    time.sleep(0.6)
    assert each.control() == "pause"
    client.delete(control_key(job_id))


def test_a_worker_shutdown_answers_pause(job_id: str, lease: Lease) -> None:
    each = lease(heartbeat_interval_s=60)
    SHUTDOWN.set()
    try:
        assert each.control() == "pause"
    finally:
        SHUTDOWN.clear()
    assert each.control() == "continue"


def test_write_after_cancel_writes_only_for_the_worker_the_user_cancelled(
    settings: Settings, session: Session, job_id: str, lease: Lease
) -> None:
    each = lease(heartbeat_interval_s=60)
    each.write_after_cancel(lambda s: add_event(s, job_id=job_id, message="while running"))
    assert "while running" not in _events(session, job_id)  # not cancelled: the guarded writes are the way
    assert transition(session, job_id=job_id, expected=(S.running,), to=S.cancelled, message="cancel")
    session.commit()
    each.write_after_cancel(lambda s: add_event(s, job_id=job_id, message="kept"))
    assert "kept" in _events(session, job_id)

    session.execute(update(Job).where(Job.id == job_id).values(worker_id="w:2"))
    session.commit()
    each.write_after_cancel(lambda s: add_event(s, job_id=job_id, message="not mine"))
    assert "not mine" not in _events(session, job_id)
