"""Hand-offs to the worker through Redis: the Celery task message and the per-job control key.

The API sends the task by name (`sppo.train` on the queue of the job's device count, core/queues.py) and
never imports the worker code. A job that has run before (requeued after its worker was lost or shut
down, or resumed after a pause) is sent ahead of jobs that have never started: it holds checkpoints and a
user is watching its progress, and at the back of the queue it would wait behind every job submitted
while it ran.
"""

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

import redis
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.errors import ServiceUnavailable
from core.models import Job, JobStatus, WebhookDelivery, now
from core.queues import (
    CONTROL_TTL_S,
    EVALUATE_TASK,
    EVALUATION_QUEUE,
    TRAIN_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    broker_options,
    control_key,
    job_devices,
    training_queue,
)
from core.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per priority step (0, 3, 6, 9) and pops step 0 first
RESUMED_PRIORITY, NEW_PRIORITY = 0, 6


@lru_cache
def _celery(broker_url: str) -> "Celery":
    from celery import Celery

    # Fail fast when the broker is down: the job stays queued and is re-dispatched later.
    return Celery(
        broker=broker_url,
        broker_connection_timeout=2,
        broker_connection_max_retries=1,
        broker_transport_options=broker_options(),
    )


@lru_cache
def redis_client(url: str) -> "redis.Redis":
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def send_training_task(settings: Settings, job_id: str, n_devices: int = 1, *, resumed: bool = False) -> bool:
    """Publish the training task on the queue of its device count, ahead of new jobs if `resumed`; False
    (logged) if the broker could not take it."""
    queue = training_queue(n_devices)
    try:
        _celery(str(settings.redis_url)).send_task(
            TRAIN_TASK,
            args=[job_id],
            queue=queue,
            priority=RESUMED_PRIORITY if resumed else NEW_PRIORITY,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        )
    except Exception:  # any broker failure: the job must survive it, so log and report
        log.warning(
            "could not dispatch job %s to the %s queue; it stays queued", job_id, queue, exc_info=True
        )
        return False
    return True


def send_evaluation_task(settings: Settings, evaluation_id: str) -> bool:
    """Publish an evaluation task; False (logged) if the broker could not take it."""
    try:
        _celery(str(settings.redis_url)).send_task(
            EVALUATE_TASK, args=[evaluation_id], queue=EVALUATION_QUEUE, retry=False
        )
    except Exception:  # the caller reports it; the evaluation row records the failure
        log.warning("could not dispatch evaluation %s", evaluation_id, exc_info=True)
        return False
    return True


def send_webhook_task(settings: Settings, delivery_id: str) -> bool:
    """Publish a webhook delivery; False (logged) if the broker could not take it (the reaper tries again)."""
    try:
        _celery(str(settings.redis_url)).send_task(
            WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE, retry=False
        )
    except Exception:  # the delivery stays due in the outbox
        log.warning("could not dispatch webhook delivery %s", delivery_id, exc_info=True)
        return False
    return True


def dispatch_due_webhooks(session: Session, *, settings: Settings, limit: int = 100) -> int:
    """Send the outbox's due deliveries to the webhook workers: new ones, retries whose backoff is over, and
    ones sent more than a lease ago that no worker finished (a lost message, a killed worker)."""
    stamp = now()
    due = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= stamp,
            or_(
                WebhookDelivery.dispatched_at.is_(None),
                WebhookDelivery.dispatched_at < stamp - settings.heartbeat_lease_s,
            ),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    sent = 0
    for delivery_id in due:
        if not send_webhook_task(settings, delivery_id):
            break  # the broker is down; the next round tries again
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(dispatched_at=stamp)
        )
        session.commit()
        sent += 1
    return sent


def dispatch(session: Session, *, settings: Settings, job_id: str) -> bool:
    """Send a committed, queued job to the broker and record it. A job sent twice is harmless: the worker's
    claim (queued → running) is a guarded transition, so only one run ever starts."""
    hyperparameters, started_at = session.execute(
        select(Job.hyperparameters, Job.started_at).where(Job.id == job_id)
    ).one()
    if not send_training_task(
        settings, job_id, job_devices(hyperparameters or {}), resumed=started_at is not None
    ):
        return False
    session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=now()))
    session.commit()
    return True


def dispatch_pending_jobs(session: Session, *, settings: Settings) -> int:
    """Re-send queued jobs that never reached the broker (it was down when they were created or resumed)."""
    pending = session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.queued, Job.dispatched_at.is_(None))
        .order_by(Job.created_at)
    ).all()
    sent = 0
    for job_id in pending:
        if not dispatch(session, settings=settings, job_id=job_id):
            break  # the broker is still down; try again on the next round
        sent += 1
    if sent:
        log.info("re-dispatched %d queued job(s)", sent)
    return sent


def set_control(settings: Settings, job_id: str, value: str) -> None:
    """Ask the worker running `job_id` to "cancel" or "pause" (it checks between steps)."""
    try:
        redis_client(str(settings.redis_url)).set(control_key(job_id), value, ex=CONTROL_TTL_S)
    except redis.RedisError as exc:
        raise ServiceUnavailable("The job control store (Redis) is unreachable; try again.") from exc


def clear_control(settings: Settings, job_id: str) -> None:
    try:
        redis_client(str(settings.redis_url)).delete(control_key(job_id))
    except redis.RedisError as exc:
        raise ServiceUnavailable("The job control store (Redis) is unreachable; try again.") from exc
