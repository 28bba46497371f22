"""Recovery of lost work against real databases (SQLite and PostgreSQL) and a real Redis broker."""

from collections.abc import Callable
from typing import Any

import redis
from kombu import Connection
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.dispatch import dispatch, send_evaluation_task, send_training_task
from app.services.reaper import broker_holds, lock_ttl_s, reap_once
from core.models import Checkpoint, Evaluation, Job, JobEvent, JobStatus, now
from core.queues import EVALUATION_QUEUE, TRAIN_QUEUE, broker_options, redis_key
from core.settings import Settings
from worker.evaluations import claim_evaluation
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
    assert job.status == S.failed and job.error_code == "worker_lost" and job.worker_losses == 1
    assert "after 3 attempt(s) without a new checkpoint" in (job.error_message or "")
    assert "Resume the job to continue from the start" in (job.error_message or "")


def _checkpoint(session: Session, job_id: str, step: int) -> None:
    """The row the worker's reporter writes for a checkpoint (worker/records.py)."""
    uri = f"jobs/{job_id}/run/checkpoints/step-{step}/adapter"
    session.add(Checkpoint(job_id=job_id, step_number=step, fine_tuned_model_checkpoint=f"m:{step}", uri=uri))
    session.commit()


def _lost_run(make_job: Callable[..., str], **values: Any) -> str:
    return make_job(status=S.running, worker_id="w:1", heartbeat_at=now() - 60, **values)


def test_a_loss_after_a_new_checkpoint_costs_no_attempt(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    # On its last attempt, the run started from the checkpoint at step 6 and recorded one at step 27.
    job_id = _lost_run(make_job, attempt=3, max_attempts=3, worker_losses=2, run_start_step=6)
    for step in (6, 27):
        _checkpoint(session, job_id, step)
    assert reap_once(session, settings=settings).requeued == [job_id]
    job = _job(session, job_id)
    assert (job.status, job.attempt, job.worker_losses) == (S.queued, 3, 3)
    event = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).one()
    assert "after checkpointing step 27 (its run started at step 6)" in event.message
    assert "requeued without using an attempt (attempt 3 of 3, worker loss 3 of at most 20)" in event.message
    assert event.data == {
        "status": "queued", "code": "worker_lost", "progressed": True, "checkpoint_step": 27,
        "worker_losses": 3,
    }  # fmt: skip

    # The next run starts from step 27 (the claim reads it) and is lost before another checkpoint.
    assert claim_job(session, job_id=job_id, worker_id="w:2") is not None
    assert _job(session, job_id).run_start_step == 27
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now() - 60))
    session.commit()
    assert reap_once(session, settings=settings).failed == [job_id]
    job = _job(session, job_id)
    assert (job.status, job.error_code, job.worker_losses) == (S.failed, "worker_lost", 4)
    assert "Resume the job to continue from the checkpoint at step 27" in (job.error_message or "")


def test_a_loss_without_a_new_checkpoint_costs_an_attempt(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    job_id = _lost_run(make_job, attempt=1, run_start_step=6)
    _checkpoint(session, job_id, 6)  # only the checkpoint the run started from
    assert reap_once(session, settings=settings).requeued == [job_id]
    job = _job(session, job_id)
    assert (job.status, job.attempt, job.worker_losses) == (S.queued, 2, 1)
    message = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).one()
    assert "with no checkpoint since its run started at step 6; requeued as attempt 2 of 3" in message


def test_a_job_that_keeps_moving_fails_past_the_cap_on_worker_losses(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    capped = settings.model_copy(update={"max_worker_losses": 5})
    moving = _lost_run(make_job, attempt=1, worker_losses=4, run_start_step=8)
    runaway = _lost_run(make_job, attempt=1, worker_losses=5, run_start_step=8)
    for job_id in (moving, runaway):
        _checkpoint(session, job_id, 10)
    report = reap_once(session, settings=capped)
    assert (report.requeued, report.failed) == ([moving], [runaway])
    assert (_job(session, moving).attempt, _job(session, moving).worker_losses) == (1, 5)
    job = _job(session, runaway)
    assert (job.status, job.error_code, job.worker_losses) == (S.failed, "worker_lost", 6)
    assert "the job lost its worker 6 times, more than the 5 it may" in (job.error_message or "")


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


def _next_training_message(settings: Settings) -> str:
    """The job id of the message a worker would take next (a kombu consumer with Celery's options)."""
    with Connection(str(settings.redis_url), transport_options=broker_options()) as connection:
        queue = connection.SimpleQueue(TRAIN_QUEUE)
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    args, _kwargs, _embed = message.payload
    return str(args[0])


def test_a_requeued_job_goes_ahead_of_jobs_that_never_started(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    client = redis.Redis.from_url(str(settings.redis_url))
    for leftover in client.keys(redis_key(TRAIN_QUEUE) + "*"):  # other tests' messages
        client.delete(leftover)
    waiting = make_job()
    assert dispatch(session, settings=settings, job_id=waiting)  # submitted while the other one ran
    lost = make_job(
        status=S.running, attempt=1, worker_id="w:1", heartbeat_at=now() - 60, started_at=now() - 90
    )
    assert reap_once(session, settings=settings).requeued == [lost]
    assert [_next_training_message(settings), _next_training_message(settings)] == [lost, waiting]


def test_claim_takes_only_queued_jobs(session: Session, make_job: Callable[..., str]) -> None:
    cancelled = make_job(status=S.cancelled)
    paused = make_job(status=S.paused)
    assert claim_job(session, job_id=cancelled, worker_id="w") is None
    assert claim_job(session, job_id=paused, worker_id="w") is None
    queued = make_job()
    job = claim_job(session, job_id=queued, worker_id="w")
    assert job is not None and job.status == S.running and job.attempt == 1 and job.worker_id == "w"


def _evaluation(session: Session, make_job: Callable[..., str], **values: Any) -> str:
    tenant_id = _job(session, make_job()).tenant_id
    evaluation = Evaluation(tenant_id=tenant_id, model="sppo-tiny", file_id="file-x", **values)
    session.add(evaluation)
    session.commit()
    return evaluation.id


def _evaluation_row(session: Session, evaluation_id: str) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id, populate_existing=True)
    assert evaluation is not None
    return evaluation


def test_a_silent_evaluation_is_requeued_and_sent_again(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    stale = _evaluation(
        session, make_job, status=S.running, attempt=1, worker_id="w:1", heartbeat_at=now() - 60
    )
    fresh = _evaluation(session, make_job, status=S.running, attempt=1, worker_id="w:2", heartbeat_at=now())
    report = reap_once(session, settings=settings)
    assert report.evaluations_requeued == [stale]
    row = _evaluation_row(session, stale)
    assert (row.status, row.attempt, row.worker_id) == (S.queued, 2, None)
    messages = redis.Redis.from_url(str(settings.redis_url)).lrange(redis_key(EVALUATION_QUEUE), 0, -1)
    assert any(stale.encode() in message for message in messages)
    assert _evaluation_row(session, fresh).status == S.running
    assert claim_evaluation(settings, stale, "w:3") and not claim_evaluation(settings, stale, "w:4")


def test_an_evaluation_fails_clearly_after_max_attempts(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    evaluation_id = _evaluation(
        session, make_job, status=S.running, attempt=3, worker_id="w:1", heartbeat_at=now() - 60
    )
    assert reap_once(session, settings=settings).evaluations_failed == [evaluation_id]
    row = _evaluation_row(session, evaluation_id)
    assert (row.status, row.error_code) == (S.failed, "worker_lost")
    assert "after 3 attempt(s)" in (row.error_message or "")


def test_a_redelivered_message_takes_over_an_evaluation_whose_worker_went_silent(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    orphan = _evaluation(
        session, make_job, status=S.running, attempt=1, worker_id="w:1", heartbeat_at=now() - 60
    )
    alive = _evaluation(session, make_job, status=S.running, attempt=1, worker_id="w:2", heartbeat_at=now())
    assert claim_evaluation(settings, orphan, "w:3")
    row = _evaluation_row(session, orphan)
    assert (row.status, row.attempt, row.worker_id) == (S.running, 2, "w:3")
    assert not claim_evaluation(settings, alive, "w:3")  # its worker heartbeats: the message is a duplicate
    assert _evaluation_row(session, alive).worker_id == "w:2"


def test_a_queued_evaluation_whose_message_was_lost_is_sent_again(
    session: Session, settings: Settings, make_job: Callable[..., str]
) -> None:
    client = redis.Redis.from_url(str(settings.redis_url))
    long_ago = now() - 600
    lost = _evaluation(session, make_job, dispatched_at=long_ago)  # as after a FLUSHDB: no message anywhere
    held = _evaluation(session, make_job, dispatched_at=long_ago)  # waiting its turn behind others
    assert send_evaluation_task(settings, held)
    recent = _evaluation(session, make_job, dispatched_at=now())  # its message may still be on its way
    before = now()
    reap_once(session, settings=settings)
    queued = b"".join(client.lrange(redis_key(EVALUATION_QUEUE), 0, -1))
    assert lost.encode() in queued, "the lost evaluation was not sent again"
    assert (_evaluation_row(session, lost).dispatched_at or 0) >= before
    assert _evaluation_row(session, held).dispatched_at == long_ago  # its message is still in the queue
    assert recent.encode() not in queued
    # Were the first message only delayed, it and the new one make two: only one claim wins.
    assert claim_evaluation(settings, lost, "w:1") and not claim_evaluation(settings, lost, "w:2")


def test_the_lock_of_an_api_killed_mid_round_expires_within_a_minute() -> None:
    assert [lock_ttl_s(s) for s in (0.5, 5, 20, 3600)] == [5.0, 10.0, 40.0, 60.0]
