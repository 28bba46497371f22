"""Recovery of lost work, run periodically by the API (see app/main.py) under a Redis lock.

- A `running` job whose heartbeat is older than the lease lost its worker (killed, machine gone, network
  split): it is requeued and the next run resumes from its last checkpoint. The loss costs an attempt
  (`attempt + 1`) only when the run recorded no checkpoint newer than the one it started from
  (`run_start_step`): a job that keeps checkpointing is requeued as long as it moves. It fails with
  `worker_lost` (which `resume` continues from the last checkpoint) when a run is lost without progress
  on its last attempt (`max_attempts`), or when its worker is lost more than `max_worker_losses` times in
  all (a runaway: a leak or a flapping node that kills it every few steps).
- A `queued` job that never reached the broker (`dispatched_at` NULL) is sent again, and so is one whose
  message the broker no longer holds (Redis restarted without persistence, or a flushed database).
- A `running` evaluation whose heartbeat is older than the lease is sent again and requeued with
  `attempt + 1` (the message first: a worker that takes it before the requeue commits takes the
  evaluation over, see worker/evaluations.py), or failed after `max_attempts`.
- Webhook deliveries that are due (new, past their backoff, or sent a lease ago and never finished) are
  sent to the webhook workers (app/dispatch.py, worker/webhooks.py).
- A `queued` evaluation sent longer than a lease ago whose message the broker no longer holds is sent
  again. A duplicate message is harmless: the worker's claim takes only a queued evaluation (or one whose
  worker went silent), so the second message finds nothing to do.

Why the API and not Celery beat: the API is always running when jobs exist, `make run` then needs no
extra process, and the reaper's writes are the same guarded transitions as everyone else's, so several
API processes reaping at once would be safe even without the lock (the lock only saves work).
Every requeue is guarded by the stale heartbeat it observed, so a worker that heartbeats in the meantime
keeps its job.
"""

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from app import dispatch
from core.lifecycle import last_checkpoint_step, transition
from core.models import Evaluation, Job, JobStatus, now
from core.queues import EVALUATION_QUEUE, TRAIN_QUEUE, broker_lists, redis_key, training_queues
from core.settings import Settings
from core.webhooks import enqueue_evaluation_event

log = logging.getLogger(__name__)

S = JobStatus
LOCK_NAME = "reaper:lock"
UNACKED_KEY = "unacked"  # kombu's Redis transport: messages delivered to a worker and not yet acknowledged
MAX_LOCK_TTL_S = 60.0  # a round takes seconds; an API killed mid-round must not stall recovery for long
Guard = Sequence[ColumnElement[bool]]


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    redispatched: int = 0
    evaluations_requeued: list[str] = field(default_factory=list)
    evaluations_failed: list[str] = field(default_factory=list)
    evaluations_redispatched: list[str] = field(default_factory=list)
    webhooks_dispatched: int = 0


def _last_sign_of_life() -> ColumnElement[int]:
    return func.coalesce(Job.heartbeat_at, Job.started_at, Job.updated_at)


@dataclass(frozen=True)
class LostRun:
    """A running job whose worker went silent, with what its run achieved."""

    job_id: str
    worker_id: str | None
    attempt: int
    max_attempts: int
    losses: int  # worker losses in all, this one included
    start_step: int  # the checkpoint the lost run started from
    checkpoint_step: int  # the newest checkpoint recorded, where the next run starts

    @property
    def progressed(self) -> bool:
        return self.checkpoint_step > self.start_step


def _failure(lost: LostRun, *, max_losses: int) -> str | None:
    """Why the lost run ends the job, or None when the job is requeued."""
    if lost.losses > max_losses:
        return f"the job lost its worker {lost.losses} times, more than the {max_losses} it may"
    if not lost.progressed and lost.attempt >= lost.max_attempts:
        return f"the job failed after {lost.attempt} attempt(s) without a new checkpoint"
    return None


def _fail_lost(session: Session, lost: LostRun, *, silent: str, reason: str, guard: Guard) -> bool:
    start = f"the checkpoint at step {lost.checkpoint_step}" if lost.checkpoint_step else "the start"
    message = f"{silent}; {reason}."
    return transition(
        session,
        job_id=lost.job_id,
        expected=(S.running,),
        to=S.failed,
        message=message,
        level="error",
        data=_loss_data(lost),
        where=guard,
        error_code="worker_lost",
        error_message=f"{message} Resume the job to continue from {start}; check the worker logs, it "
        "may run out of memory on this job.",
        error_param=None,
        estimated_finish=None,
        status_detail=None,
        worker_losses=lost.losses,
    )


def _requeue_lost(session: Session, lost: LostRun, *, silent: str, max_losses: int, guard: Guard) -> bool:
    if lost.progressed:
        outcome = (
            f"after checkpointing step {lost.checkpoint_step} (its run started at step {lost.start_step}); "
            f"requeued without using an attempt (attempt {lost.attempt} of {lost.max_attempts}, worker loss "
            f"{lost.losses} of at most {max_losses}), resuming from the checkpoint at step "
            f"{lost.checkpoint_step}"
        )
    else:
        outcome = (
            f"with no checkpoint since its run started at step {lost.start_step}; requeued as attempt "
            f"{lost.attempt + 1} of {lost.max_attempts}, resuming from the last checkpoint"
        )
    return transition(
        session,
        job_id=lost.job_id,
        expected=(S.running,),
        to=S.queued,
        message=f"{silent} {outcome}",
        level="warn",
        data=_loss_data(lost),
        where=guard,
        attempt=Job.attempt + (0 if lost.progressed else 1),
        worker_losses=lost.losses,
        worker_id=None,
        heartbeat_at=None,
        dispatched_at=None,
        estimated_finish=None,
        status_detail=None,
    )


def _loss_data(lost: LostRun) -> dict[str, Any]:
    return {
        "code": "worker_lost",
        "progressed": lost.progressed,
        "checkpoint_step": lost.checkpoint_step,
        "worker_losses": lost.losses,
    }


def lost_runs(session: Session, *, cutoff: int) -> list[LostRun]:
    """Running jobs whose last sign of life is older than `cutoff`."""
    rows = session.execute(
        select(
            Job.id,
            Job.worker_id,
            Job.attempt,
            Job.max_attempts,
            Job.worker_losses + 1,
            Job.run_start_step,
            last_checkpoint_step(Job.id),
        ).where(Job.status == S.running, _last_sign_of_life() < cutoff)
    ).all()
    return [LostRun(*row) for row in rows]


def reap_lost_jobs(session: Session, *, settings: Settings) -> ReapReport:
    """Requeue running jobs whose heartbeat is older than the lease, or fail them (see the module doc)."""
    report = ReapReport()
    lease = settings.heartbeat_lease_s
    cutoff = now() - lease
    for lost in lost_runs(session, cutoff=cutoff):
        guard = [_last_sign_of_life() < cutoff, Job.worker_id == lost.worker_id]
        silent = f"Worker {lost.worker_id} stopped responding (no heartbeat for {lease}s)"
        reason = _failure(lost, max_losses=settings.max_worker_losses)
        if reason is not None:
            if _fail_lost(session, lost, silent=silent, reason=reason, guard=guard):
                report.failed.append(lost.job_id)
        elif _requeue_lost(session, lost, silent=silent, max_losses=settings.max_worker_losses, guard=guard):
            report.requeued.append(lost.job_id)
        session.commit()
    return report


def reap_lost_evaluations(session: Session, *, settings: Settings, report: ReapReport) -> None:
    """Requeue (or fail, after max_attempts) running evaluations whose heartbeat is older than the lease."""
    cutoff = now() - settings.heartbeat_lease_s
    alive = func.coalesce(Evaluation.heartbeat_at, Evaluation.started_at, Evaluation.created_at)
    stale = session.execute(
        select(Evaluation.id, Evaluation.attempt, Evaluation.max_attempts, Evaluation.worker_id).where(
            Evaluation.status == S.running, alive < cutoff
        )
    ).all()
    for evaluation_id, attempt, max_attempts, worker_id in stale:
        guard = update(Evaluation).where(
            Evaluation.id == evaluation_id,
            Evaluation.status == S.running,
            alive < cutoff,
            Evaluation.worker_id.is_(None) if worker_id is None else Evaluation.worker_id == worker_id,
        )
        silent = f"The worker stopped responding (no heartbeat for {settings.heartbeat_lease_s}s)"
        if attempt >= max_attempts:
            message = f"{silent}; the evaluation failed after {attempt} attempt(s)."
            values = {"status": S.failed, "error_code": "worker_lost", "error_message": message}
            result = session.execute(guard.values(**values, finished_at=now()))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                enqueue_evaluation_event(session, evaluation_id=evaluation_id, status=S.failed)
                report.evaluations_failed.append(evaluation_id)
        elif dispatch.send_evaluation_task(settings, evaluation_id):  # broker down: next round
            requeue = {"status": S.queued, "attempt": Evaluation.attempt + 1, "worker_id": None}
            result = session.execute(guard.values(**requeue, heartbeat_at=None, dispatched_at=now()))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                report.evaluations_requeued.append(evaluation_id)
        session.commit()


def broker_holds(client: "redis.Redis", task_id: str, queue_names: Sequence[str] = (TRAIN_QUEUE,)) -> bool:
    """Whether a message for `task_id` (a job or evaluation id) waits in one of the queues or is reserved
    by a worker.

    Celery's message headers carry the task arguments as text (`argsrepr`), so a substring test finds it.
    """
    needle = task_id.encode()
    for key in (key for name in queue_names for key in broker_lists(name)):
        if any(needle in message for message in client.lrange(key, 0, -1)):
            return True
    return any(needle in message for message in client.hvals(redis_key(UNACKED_KEY)))


def find_lost_messages(session: Session, *, settings: Settings, client: "redis.Redis") -> list[str]:
    """Queued jobs dispatched a while ago whose message the broker no longer holds: mark them undispatched."""
    cutoff = now() - settings.heartbeat_lease_s
    candidates = session.scalars(
        select(Job.id).where(Job.status == S.queued, Job.dispatched_at < cutoff)
    ).all()
    queues = training_queues(settings)
    lost = [job_id for job_id in candidates if not broker_holds(client, job_id, queues)]
    if lost:
        session.execute(
            update(Job).where(Job.id.in_(lost), Job.status == S.queued).values(dispatched_at=None)
        )
        session.commit()
        log.warning("the broker lost the messages of %d queued job(s); sending them again", len(lost))
    return lost


def resend_lost_evaluations(
    session: Session, *, settings: Settings, client: "redis.Redis", report: ReapReport
) -> None:
    """Send again the queued evaluations sent over a lease ago whose message the broker no longer holds."""
    sent = func.coalesce(Evaluation.dispatched_at, Evaluation.created_at)
    candidates = session.scalars(
        select(Evaluation.id)
        .where(Evaluation.status == S.queued, sent < now() - settings.heartbeat_lease_s)
        .order_by(Evaluation.created_at)
    ).all()
    for evaluation_id in candidates:
        if broker_holds(client, evaluation_id, (EVALUATION_QUEUE,)):
            continue
        if not dispatch.send_evaluation_task(settings, evaluation_id):
            break  # the broker is down again; the next round tries again
        queued = update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.status == S.queued)
        session.execute(queued.values(dispatched_at=now()))
        session.commit()
        report.evaluations_redispatched.append(evaluation_id)
    if report.evaluations_redispatched:
        log.warning(
            "the broker lost the messages of %d queued evaluation(s); sent them again",
            len(report.evaluations_redispatched),
        )


def lock_ttl_s(interval_s: float) -> float:
    """How long the reaper lock outlives a holder that died mid-round: two intervals, within [5 s, 60 s]."""
    return min(MAX_LOCK_TTL_S, max(5.0, interval_s * 2))


def reap_once(session: Session, *, settings: Settings) -> ReapReport:
    """One round: lost running jobs, lost messages, undispatched jobs. Skipped while another API holds it."""
    client = dispatch.redis_client(str(settings.redis_url))
    lock = None
    try:
        lock = client.lock(
            redis_key(LOCK_NAME), timeout=lock_ttl_s(settings.reaper_interval_s), blocking=False
        )
        if not lock.acquire():
            return ReapReport()
    except redis.RedisError:
        lock = None  # Redis down: the guarded writes make a lock-free round safe; dispatch waits for Redis
    try:
        report = reap_lost_jobs(session, settings=settings)
        for job_id in report.requeued:
            log.warning("requeued lost job %s", job_id)
        for job_id in report.failed:
            log.error("job %s failed: its worker was lost too often", job_id)
        reap_lost_evaluations(session, settings=settings, report=report)
        for evaluation_id in report.evaluations_requeued:
            log.warning("requeued lost evaluation %s", evaluation_id)
        if lock is not None:
            find_lost_messages(session, settings=settings, client=client)
            resend_lost_evaluations(session, settings=settings, client=client, report=report)
        report.redispatched = dispatch.dispatch_pending_jobs(session, settings=settings)
        report.webhooks_dispatched = dispatch.dispatch_due_webhooks(session, settings=settings)
        return report
    finally:
        if lock is not None:
            with contextlib.suppress(redis.RedisError):  # expired or Redis gone: it times out on its own
                lock.release()
