"""Job status transitions and events: the one place the job lifecycle is written, by the API and the worker.

`validating_files → queued → running → succeeded | failed | cancelled`, plus `paused` (resumable), and
`failed → queued` when the failure was not the user's (`RESUMABLE_ERRORS`: resume continues from the last
checkpoint).
Every transition is a single `UPDATE ... WHERE id = :id AND status IN (:expected)` and writes an event in
the same transaction, so two actors racing on a job (API cancel vs. worker finish, two workers claiming)
can never both win. A transition that matches no row returns False: the caller lost the race, and a
worker must then stop working on the job (this is what makes an immediate `cancelled` safe).
"""

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.models import Checkpoint, Job, JobEvent, JobStatus, now
from core.webhooks import enqueue_job_event

# OpenAI's event levels; the engine says "warning", the API speaks "warn".
_LEVELS = {"info": "info", "warn": "warn", "warning": "warn", "error": "error"}

# Failures that were not the user's doing, so the same job may well succeed when it runs again: `resume`
# takes a job failed with one of these back to `queued`, and it continues from its last checkpoint. Any
# other code (invalid_config, invalid_training_file, invalid_grader, grader_constant_reward,
# training_diverged, checkpoint_error, ...) would fail the same way again: the user fixes the request and
# creates a new job.
RESUMABLE_ERRORS = frozenset(
    {
        "worker_lost",  # the worker died or went silent too often (app/services/reaper.py)
        "internal_error",  # an unexpected error in the service
        "distributed_process_failed",  # a process of a multi-device run died
        "out_of_memory",  # the worker's memory: another worker, or the same one with memory freed, may fit it
        "python_grader_unavailable",  # that worker could not sandbox Python graders; another may
    }
)


def last_checkpoint_step(job_id: str | InstrumentedAttribute[str]) -> ScalarSelect[int]:
    """The step of the job's newest recorded checkpoint, 0 when it has none (a run resumes from it)."""
    newest = func.coalesce(func.max(Checkpoint.step_number), 0)
    return select(newest).where(Checkpoint.job_id == job_id).scalar_subquery()


def add_event(
    session: Session,
    *,
    job_id: str,
    message: str,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job_id, message=message, level=_LEVELS.get(level, "info"), type=type, data=data)
    session.add(event)
    return event


def transition(
    session: Session,
    *,
    job_id: str,
    expected: Collection[JobStatus],
    to: JobStatus,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Move a job to `to` if its status is one of `expected`; write `message` as an event. Not committed.

    `values` are further columns set in the same UPDATE (e.g. `finished_at`, `worker_id`, `error_code`).
    `where` adds guards to the same UPDATE, e.g. `Job.worker_id == me` so that a worker whose job was
    requeued and claimed by another worker can no longer finish it.
    """
    stamp = now()
    if to in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled):
        values.setdefault("finished_at", stamp)
    if to is JobStatus.running:
        values.setdefault("started_at", stamp)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([str(s) for s in expected]), *where)
        .values(status=str(to), updated_at=stamp, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id=job_id, message=message, level=level, data={"status": str(to), **(data or {})})
    enqueue_job_event(
        session, job_id=job_id, status=to
    )  # in this transaction: the event exists iff the status does
    return True
