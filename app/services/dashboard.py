"""Read models for the dashboard: metric series, latest metrics per job, and which controls a job allows.

Queries stay here (not in page routes); every one is scoped to the tenant through `get_job`/`tenant_id`.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.services import progress
from app.services.jobs import get_job
from core.lifecycle import RESUMABLE_ERRORS
from core.models import FINISHED_STATUSES, Job, JobStatus, MetricPoint, Tenant

S = JobStatus
# Mirrors the guarded transitions in app/services/jobs.py: which statuses each control accepts.
_ACTIONS: dict[str, tuple[JobStatus, ...]] = {
    "pause": (S.validating_files, S.queued, S.running),
    "resume": (S.paused,),
    "cancel": (S.validating_files, S.queued, S.running, S.paused),
}


def allowed_actions(job: Job) -> list[str]:
    """The controls that would change this job now (pause of an already-pausing job still shows)."""
    allowed = [action for action, statuses in _ACTIONS.items() if job.status in statuses]
    if job.status == S.failed and job.error_code in RESUMABLE_ERRORS:
        allowed.append("resume")  # a failure that was not the request's: it continues from its checkpoint
    return allowed


def is_finished(job: Job) -> bool:
    return job.status in FINISHED_STATUSES


@dataclass(frozen=True)
class Point:
    step: int
    elapsed_s: float  # wall-clock seconds since the job started
    metrics: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "t": self.elapsed_s, "metrics": self.metrics}


def _elapsed(job: Job, point: MetricPoint) -> float:
    # The engine's own clock when it reports one; else the row's timestamp (whole seconds).
    reported = point.metrics.get("perf/elapsed_s")
    if isinstance(reported, int | float):
        return float(reported)
    return float(point.created_at - (job.started_at or job.created_at))


def metric_points(
    session: Session, *, tenant: Tenant, job_id: str, after_step: int | None = None, limit: int = 10_000
) -> list[Point]:
    """The job's step metrics in step order (the same series as `GET .../metrics`), with elapsed time."""
    job = get_job(session, tenant=tenant, job_id=job_id)
    rows, _ = progress.list_metrics(session, tenant=tenant, job_id=job_id, after_step=after_step, limit=limit)
    return [Point(row.step, _elapsed(job, row), dict(row.metrics)) for row in rows]


def latest_metrics(session: Session, *, tenant: Tenant, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The last step's metrics of each of the tenant's jobs in `job_ids` (jobs without any are absent)."""
    if not job_ids:
        return {}
    last = (
        select(MetricPoint.job_id, func.max(MetricPoint.step).label("step"))
        .join(Job, Job.id == MetricPoint.job_id)
        .where(Job.tenant_id == tenant.id, MetricPoint.job_id.in_(job_ids))
        .group_by(MetricPoint.job_id)
        .subquery()
    )
    rows = session.scalars(
        select(MetricPoint).join(
            last, (MetricPoint.job_id == last.c.job_id) & (MetricPoint.step == last.c.step)
        )
    )
    return {row.job_id: dict(row.metrics) for row in rows}


SCORE_LOOKBACK = (
    500  # steps searched back for a job's last evaluation (the auto schedule evaluates far more often)
)


def latest_scores(session: Session, *, tenant: Tenant, job_ids: list[str]) -> dict[str, float]:
    """The last validation score (eval/pass@1) of each of the tenant's jobs in `job_ids` that has one."""
    scores: dict[str, float] = {}
    for job_id in job_ids:
        rows = session.scalars(
            select(MetricPoint.metrics)
            .join(Job, Job.id == MetricPoint.job_id)
            .where(Job.tenant_id == tenant.id, MetricPoint.job_id == job_id)
            .order_by(MetricPoint.step.desc())
            .limit(SCORE_LOOKBACK)
        )
        found = next((m["eval/pass@1"] for m in rows if isinstance(m.get("eval/pass@1"), int | float)), None)
        if found is not None:
            scores[job_id] = float(found)
    return scores
