"""What the policy wrote: the few samples each training step keeps (worker/engine/samples.py), by step."""

from itertools import groupby

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services.jobs import get_job
from core.models import Tenant, TrainingSample

StepSamples = tuple[int, list[TrainingSample]]


def list_samples(
    session: Session,
    *,
    tenant: Tenant,
    job_id: str,
    after_step: int | None = None,
    step: int | None = None,
    limit: int,
) -> tuple[list[StepSamples], bool]:
    """Up to `limit` steps' samples in step order, after `after_step` (or only `step`), each step's in
    batch order; returns (steps, has_more). Another tenant's job is NotFound."""
    get_job(session, tenant=tenant, job_id=job_id)
    steps = select(TrainingSample.step).where(TrainingSample.job_id == job_id).distinct()
    if after_step is not None:
        steps = steps.where(TrainingSample.step > after_step)
    if step is not None:
        steps = steps.where(TrainingSample.step == step)
    chosen = list(session.scalars(steps.order_by(TrainingSample.step).limit(limit + 1)))
    return _by_step(session, job_id, chosen[:limit]), len(chosen) > limit


def latest_samples(session: Session, *, tenant: Tenant, job_id: str, steps: int) -> list[StepSamples]:
    """The last `steps` steps' samples, newest step first (the job page's panel)."""
    get_job(session, tenant=tenant, job_id=job_id)
    last = session.scalars(
        select(TrainingSample.step)
        .where(TrainingSample.job_id == job_id)
        .distinct()
        .order_by(TrainingSample.step.desc())
        .limit(steps)
    )
    return _by_step(session, job_id, list(last))[::-1]


def _by_step(session: Session, job_id: str, steps: list[int]) -> list[StepSamples]:
    """The samples of `steps` (ascending), grouped by step."""
    if not steps:
        return []
    rows = session.scalars(
        select(TrainingSample)
        .where(TrainingSample.job_id == job_id, TrainingSample.step.in_(steps))
        .order_by(TrainingSample.step, TrainingSample.position)
    )
    return [(step, list(group)) for step, group in groupby(rows, key=lambda row: row.step)]
