"""A job's lifecycle as a worker writes it: claim, succeed (model, adapter, result file), fail, pause.

Each function is one guarded transition (core/lifecycle.py) in one transaction: a claim only takes a
`queued` job, and every later write also requires `worker_id = me`, so a worker whose job was cancelled,
or requeued by the reaper and claimed by another worker, can never overwrite its outcome.
"""

import csv
import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from core.lifecycle import last_checkpoint_step, transition
from core.models import File, FineTunedModel, Job, JobStatus, MetricPoint, Tenant, new_id, now
from core.settings import Settings
from core.storage import artifact_store

S = JobStatus
RESULTS_PURPOSE = "fine-tune-results"  # OpenAI's purpose for a job's result file


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_job(session: Session, *, job_id: str, worker_id: str) -> Job | None:
    """queued → running for this worker; None when the job is not queued (a duplicate or stale message).

    A job already running on this very worker counts as claimed: the claim is retried after a dropped
    connection (worker/dbretry.py), and the lost try may have committed.
    """
    claimed = transition(
        session,
        job_id=job_id,
        expected=(S.queued, S.running),
        where=[or_(Job.status == S.queued, Job.worker_id == worker_id)],
        to=S.running,
        message=f"Job started on worker {worker_id}",
        worker_id=worker_id,
        heartbeat_at=now(),
        # The reaper counts attempts when it requeues; the first run is attempt 1.
        attempt=case((Job.attempt < 1, 1), else_=Job.attempt),
        # Where this run starts, as far as the DB knows (the reporter's on_start says it exactly): a
        # newer checkpoint when the worker is lost is progress, and the loss costs no attempt.
        run_start_step=last_checkpoint_step(job_id),
        started_at=func.coalesce(Job.started_at, now()),  # a resumed job keeps its first start time
        estimated_finish=None,
    )
    if not claimed:
        session.rollback()
        return None
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def _mine(worker_id: str) -> list[Any]:
    return [Job.worker_id == worker_id]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "org"


def fine_tuned_model_name(session: Session, job: Job) -> str:
    """`ft:<base>:<tenant>:<suffix>:<job-id>`, OpenAI's naming (an empty suffix leaves its field empty)."""
    tenant = session.get(Tenant, job.tenant_id)
    owner = _slug(tenant.name if tenant else job.tenant_id)
    return f"ft:{job.base_model}:{owner}:{job.suffix or ''}:{job.id}"


def _metrics_csv(session: Session, *, settings: Settings, job: Job) -> File:
    """The step metrics as CSV, stored as a file of the tenant (OpenAI's `result_files`)."""
    points = session.execute(
        select(MetricPoint.step, MetricPoint.metrics)
        .where(MetricPoint.job_id == job.id)
        .order_by(MetricPoint.step)
    ).all()
    names = sorted({name for _, metrics in points for name in metrics})
    file_id = new_id("file")
    store = artifact_store(settings)
    key = f"files/{file_id}.csv"
    path = store.local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *names])
        for step, metrics in points:
            writer.writerow([step, *(metrics.get(name, "") for name in names)])
    data = path.read_bytes()
    store.publish(key, keep_copy=False)
    file = File(
        id=file_id,
        tenant_id=job.tenant_id,
        filename=f"{job.id}-metrics.csv",
        purpose=RESULTS_PURPOSE,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        storage_uri=key,
        line_count=len(points),
        item_fields=[],
    )
    session.add(file)
    return file


def _commit_if(session: Session, done: bool) -> bool:
    """Commit a guarded write that won, roll back one that lost (the job is no longer this worker's)."""
    if done:
        session.commit()
    else:
        session.rollback()
    return done


def succeed_job(
    session: Session,
    *,
    settings: Settings,
    job: Job,
    worker_id: str,
    model_name: str,
    adapter_dir: Path,
    final_step: int,
    trained_tokens: int,
    model_step: int,
    model_eval: dict[str, float],
) -> bool:
    """running → succeeded with the fine-tuned model registered and the metrics CSV as a result file.
    `adapter_dir` holds the weights of step `model_step` (the best checkpoint, or the last step), whose
    evaluation scores are `model_eval`."""
    result_file = _metrics_csv(session, settings=settings, job=job)
    session.add(
        FineTunedModel(
            id=model_name,
            tenant_id=job.tenant_id,
            job_id=job.id,
            base_model=job.base_model,
            adapter_uri=artifact_store(settings).key_of(adapter_dir),
        )
    )
    session.flush()
    done = transition(
        session,
        job_id=job.id,
        expected=(S.running,),
        to=S.succeeded,
        message=f"The job has successfully completed; {model_summary(model_step, model_eval)}",
        data={
            "fine_tuned_model": model_name,
            "fine_tuned_model_step": model_step,
            "step": final_step,
            **model_eval,
        },
        where=_mine(worker_id),
        fine_tuned_model=model_name,
        fine_tuned_model_step=model_step,
        result_files=[result_file.id],
        current_step=final_step,
        trained_tokens=trained_tokens,
        estimated_finish=None,
    )
    if not _commit_if(session, done):
        artifact_store(settings).delete(result_file.storage_uri)
    return done


def model_summary(model_step: int, model_eval: dict[str, float]) -> str:
    """Which checkpoint the fine-tuned model is, and its validation score when it has one."""
    score = model_eval.get("eval/pass@1")
    scored = f" (eval/pass@1 {score:.3f})" if score is not None else ""
    return f"the fine-tuned model is the checkpoint at step {model_step}{scored}"


def fail_job(
    session: Session, *, job_id: str, worker_id: str | None, code: str, message: str, param: str | None
) -> bool:
    """running → failed with an error a user can act on. `worker_id=None` fails a job no worker holds."""
    guard = _mine(worker_id) if worker_id is not None else []
    done = transition(
        session,
        job_id=job_id,
        expected=(S.running,) if worker_id is not None else (S.queued, S.running),
        to=S.failed,
        message=f"Job failed: {message}",
        level="error",
        data={"code": code, "param": param},
        where=guard,
        error_code=code,
        error_message=message,
        error_param=param,
        estimated_finish=None,
        status_detail=None,
    )
    return _commit_if(session, done)


def requeue_job(session: Session, *, job_id: str, worker_id: str, step: int) -> bool:
    """running → queued after a worker shut down cleanly: the next worker resumes from the checkpoint."""
    done = transition(
        session,
        job_id=job_id,
        expected=(S.running,),
        to=S.queued,
        message=f"Worker {worker_id} shut down; the job is queued again and resumes from step {step}",
        level="warn",
        data={"step": step},
        where=_mine(worker_id),
        worker_id=None,
        heartbeat_at=None,
        dispatched_at=None,  # the API's dispatcher sends it again (app/services/reaper.py)
        estimated_finish=None,
    )
    return _commit_if(session, done)


def pause_job(session: Session, *, job_id: str, worker_id: str, step: int) -> bool:
    """running → paused, once the trainer has written the checkpoint at `step`."""
    done = transition(
        session,
        job_id=job_id,
        expected=(S.running,),
        to=S.paused,
        message=f"Job paused at step {step}; resume continues from there",
        data={"step": step},
        where=_mine(worker_id),
        worker_id=None,
        estimated_finish=None,
        pause_requested_at=None,
    )
    return _commit_if(session, done)
