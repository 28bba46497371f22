"""Fine-tuning jobs: create (validated whole, quota-checked, dispatched), list, retrieve, and control.

Cancel of a running job marks it `cancelled` at once and sets the Redis control key "cancel". This is
safe because every write the worker makes is a transition guarded by `status = 'running'` (see
core/lifecycle.py): once the API has cancelled the job, the worker's next heartbeat, checkpoint or
finish matches no row, and the worker stops. The control key only makes it stop sooner (within a step).
Pause has no such shortcut: the worker must write a checkpoint first, so it moves running → paused. A
pause is recorded in the job row (`pause_requested_at`), which the worker reads with its heartbeat, and
set as the control key for speed; so cancel and pause both work while Redis is down. Resume queues a
paused job again, and a failed one whose failure was not the request's (`RESUMABLE_ERRORS`: a lost worker,
an internal error, ...): both continue from their last checkpoint.
"""

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from app import dispatch
from app.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from app.schemas.jobs import MAX_SEED, JobCreate
from app.services.context import check_job_context
from app.services.grading import check_grader
from app.services.integrations import check_integrations
from app.services.lineage import Lineage, resolve_lineage
from app.services.pagination import page
from core.lifecycle import RESUMABLE_ERRORS, add_event, last_checkpoint_step, transition
from core.models import ACTIVE_STATUSES, Checkpoint, File, Job, JobEvent, JobStatus, Tenant, now
from core.registry import BaseModelEntry
from core.settings import Settings
from jobspec.hyperparameters import HYPERPARAMETERS, request_param, resolved_hyperparameters, run_values
from jobspec.limits import hyperparameter_refusal

log = logging.getLogger(__name__)

S = JobStatus


def _training_file(session: Session, *, tenant: Tenant, file_id: str, param: str) -> File:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id))
    if file is None:
        raise InvalidRequest(f"No such file: '{file_id}'.", param=param, code="invalid_file")
    if file.purpose != "fine-tune":
        raise InvalidRequest(f"File '{file_id}' has purpose '{file.purpose}', not 'fine-tune'.", param=param)
    return file


def _check_quota(session: Session, *, settings: Settings, tenant: Tenant) -> None:
    # Lock the tenant row (PostgreSQL) so two concurrent creates cannot both slip under the limit.
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant.id, Job.status.in_(ACTIVE_STATUSES))
    )
    limit = settings.max_concurrent_jobs_per_tenant
    if (active or 0) >= limit:
        raise QuotaExceeded(f"You have {active} queued or running jobs; the limit is {limit}.")


def _check_against_model(entry: BaseModelEntry, request: JobCreate, training: File) -> list[str]:
    """400 for settings that cannot work with this model and file; warnings for legal, surprising ones.
    Whether prompts and responses fit the model's context is app/services/context.py's check."""
    hyper = request.method.reinforcement.hyperparameters
    tokens = hyper.max_response_tokens
    if isinstance(hyper.batch_size, int) and hyper.batch_size > training.line_count:
        raise InvalidRequest(
            f"batch_size {hyper.batch_size} is larger than the {training.line_count} items of the training "
            f"file '{training.id}'; a step would repeat items. Use at most {training.line_count}.",
            param=f"{HYPERPARAMETERS}.batch_size",
        )
    warnings = []
    recommended = (entry.defaults or {}).get("max_response_tokens")
    if tokens is not None and isinstance(recommended, int) and tokens < recommended:
        warnings.append(
            f"max_response_tokens {tokens} is below the {recommended} that model '{entry.name}' "
            "recommends: longer answers are cut off and score 0 (watch the response_length_limit alarm)."
        )
    return warnings


def _check_devices(settings: Settings, request: JobCreate) -> None:
    """400 for a job no worker can ever take (batches its devices cannot share equally are _check_rules')."""
    hyper = request.method.reinforcement.hyperparameters
    n_devices = hyper.n_devices or 1
    offered = settings.training_device_counts
    if n_devices not in offered:
        raise InvalidRequest(
            f"n_devices {n_devices} is not offered by this deployment: its training workers take jobs of "
            f"{', '.join(map(str, offered))} device(s) (SPPO_TRAINING_DEVICE_COUNTS).",
            param=f"{HYPERPARAMETERS}.n_devices",
        )


def _check_selection(request: JobCreate) -> None:
    """400 for model_selection 'best', which needs validation scores, on a job without a validation file
    (early stopping, which needs them too, is one of _check_rules')."""
    if request.validation_file is not None:
        return
    hyper = request.method.reinforcement.hyperparameters
    if hyper.model_selection == "best":
        raise InvalidRequest(
            "model_selection 'best' returns the checkpoint with the best validation score, and the job has "
            "no validation_file: add one, or use 'last'.",
            param=f"{HYPERPARAMETERS}.model_selection",
        )


def _check_rules(lineage: Lineage, request: JobCreate) -> None:
    """400 for hyperparameters at odds with each other as the run will resolve them (the model's defaults
    and the parent's adapter included), with the message the engine would fail the job with."""
    reinforcement = request.method.model_dump(mode="json", exclude_none=True)["reinforcement"]
    values = run_values(
        reinforcement["hyperparameters"],
        algorithm=reinforcement["algorithm"],
        grader=reinforcement["grader"],
        model_defaults=lineage.entry.defaults or {},
    )
    refusal = hyperparameter_refusal(
        {**values, **lineage.engine_values()}, has_validation_file=request.validation_file is not None
    )
    if refusal is not None:
        raise InvalidRequest(refusal.message, param=request_param(refusal.param))


@dataclass(frozen=True)
class _Checked:
    """What the checks of a job's request found, for the job row and its first events."""

    warnings: list[str]
    integrations: list[dict[str, Any]]
    sealed_secrets: dict[str, str]


def create_job(session: Session, *, settings: Settings, tenant: Tenant, request: JobCreate) -> Job:
    lineage = resolve_lineage(session, settings=settings, tenant=tenant, model=request.model)
    method = request.method.model_dump(mode="json", exclude_none=True)
    hyperparameters = lineage.hyperparameters(method["reinforcement"]["hyperparameters"])
    checked = _check_request(session, settings=settings, tenant=tenant, request=request, lineage=lineage)
    _check_quota(session, settings=settings, tenant=tenant)
    job = _new_job(request, tenant=tenant, lineage=lineage, method=method, hyperparameters=hyperparameters,
                   checked=checked)  # fmt: skip
    session.add(job)
    session.flush()
    _add_creation_events(session, job=job, lineage=lineage, warnings=checked.warnings)
    session.commit()
    _dispatch(session, settings=settings, job=job)
    return job


def _check_request(
    session: Session, *, settings: Settings, tenant: Tenant, request: JobCreate, lineage: Lineage
) -> _Checked:
    """Every 400 of a request but its warm start's, in the order the API reports them."""
    entry = lineage.entry
    files = [_training_file(session, tenant=tenant, file_id=request.training_file, param="training_file")]
    if request.validation_file is not None:
        files.append(
            _training_file(session, tenant=tenant, file_id=request.validation_file, param="validation_file")
        )
    check_grader(session, settings=settings, tenant=tenant, grader=request.method.reinforcement.grader,
                 files=files, param="method.reinforcement.grader")  # fmt: skip
    warnings = _check_against_model(entry, request, files[0])
    _check_devices(settings, request)
    _check_selection(request)
    _check_rules(lineage, request)
    integrations, sealed_secrets = check_integrations(settings, request.integrations or [])
    # Last before the quota: it may read the files (once per model and file), with no DB connection held.
    session.commit()
    check_job_context(
        settings=settings,
        entry=entry,
        algorithm=request.method.reinforcement.algorithm,
        hyperparameters=request.method.reinforcement.hyperparameters.model_dump(exclude_none=True),
        files=list(zip(files, ("training_file", "validation_file"), strict=False)),
    )
    return _Checked(warnings, integrations, sealed_secrets)


def _new_job(
    request: JobCreate,
    *,
    tenant: Tenant,
    lineage: Lineage,
    method: dict[str, Any],
    hyperparameters: dict[str, Any],
    checked: _Checked,
) -> Job:
    return Job(
        tenant_id=tenant.id,
        model=request.model,
        base_model=lineage.entry.name,
        parent_model=lineage.parent_model,
        training_file=request.training_file,
        validation_file=request.validation_file,
        status=S.queued,
        method=method,
        hyperparameters=method["reinforcement"]["hyperparameters"],
        # what the worker will resolve, shown from the start (the worker writes the same values again)
        resolved_hyperparameters=resolved_hyperparameters(
            hyperparameters,
            algorithm=method["reinforcement"]["algorithm"],
            grader=method["reinforcement"]["grader"],
            model_defaults=lineage.entry.defaults or {},
            has_validation_file=request.validation_file is not None,
        ),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        suffix=request.suffix,
        metadata_=request.metadata,
        integrations=checked.integrations or None,
        sealed_secrets=checked.sealed_secrets or None,
    )


def _add_creation_events(session: Session, *, job: Job, lineage: Lineage, warnings: list[str]) -> None:
    add_event(session, job_id=job.id, message="Created fine-tuning job", data={"status": S.queued.value})
    if lineage.parent_model is not None:
        base = lineage.entry.name
        add_event(
            session,
            job_id=job.id,
            message=f"The job continues the adapter of '{lineage.parent_model}' (base model '{base}')",
            data={"parent_model": lineage.parent_model, "base_model": base},
        )
    for warning in warnings:
        add_event(session, job_id=job.id, level="warn", message=warning)


def _dispatch(session: Session, *, settings: Settings, job: Job) -> None:
    if not dispatch.dispatch(session, settings=settings, job_id=job.id):
        add_event(session, job_id=job.id, level="warn", message="Job queue unreachable; the job stays queued")
        session.commit()
    session.refresh(job)


def get_job(session: Session, *, tenant: Tenant, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
    if job is None:
        raise NotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id")
    return job


def list_jobs(
    session: Session,
    *,
    tenant: Tenant,
    after: str | None,
    limit: int,
    metadata: dict[str, str],
    status: str | None = None,
) -> tuple[list[Job], bool]:
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status is not None:  # the dashboard's status filter
        query = query.where(Job.status == status)
    for key, value in metadata.items():
        # JSON path lookup renders as json_extract on SQLite and ->> on PostgreSQL; key and value are bound.
        query = query.where(Job.metadata_[key].as_string() == value)
    return page(session, query, key=Job.created_at, ident=Job.id, after=after, limit=limit)


def cancel_job(session: Session, *, settings: Settings, tenant: Tenant, job_id: str) -> Job:
    job = get_job(session, tenant=tenant, job_id=job_id)
    if job.status == S.cancelled:
        return job  # idempotent
    if job.status == S.running:
        # Tell the worker first, so it stops within a step; the guarded writes make it stop regardless.
        _try_control(settings, job_id, "cancel")
    if not transition(
        session,
        job_id=job_id,
        expected=(S.validating_files, S.queued, S.running, S.paused),
        to=S.cancelled,
        message="Job cancelled by the user",
    ):
        raise Conflict(f"Job {job_id} has already {session.scalar(_status(job_id))}; it cannot be cancelled.")
    session.commit()
    session.refresh(job)
    return job


def pause_job(session: Session, *, settings: Settings, tenant: Tenant, job_id: str) -> Job:
    job = get_job(session, tenant=tenant, job_id=job_id)
    if job.status == S.paused:
        return job
    if job.status == S.running:
        # The worker checkpoints, then moves the job running → paused; the job answers "running" until then.
        # Recorded in the DB, which the worker reads with every heartbeat; the Redis key only makes it
        # sooner, so a pause works while Redis is down.
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == S.running).values(pause_requested_at=now())
        )
        add_event(session, job_id=job_id, message="Pause requested; the job pauses after its next checkpoint")
        session.commit()
        _try_control(settings, job_id, "pause")
        return job
    # A job no worker holds yet pauses at once (the worker's queued → running claim will then fail).
    if not transition(
        session, job_id=job_id, expected=(S.validating_files, S.queued), to=S.paused, message="Job paused"
    ):
        raise Conflict(
            f"Job {job_id} is {session.scalar(_status(job_id))}; only an active job can be paused."
        )
    session.commit()
    session.refresh(job)
    return job


def resume_job(session: Session, *, settings: Settings, tenant: Tenant, job_id: str) -> Job:
    """paused → queued; failed → queued when the failure was not the user's (`RESUMABLE_ERRORS`).

    Either way the next run continues from the job's last checkpoint. A failed job gets a fresh set of
    attempts and worker losses; its resume event keeps what it failed with.
    """
    job = get_job(session, tenant=tenant, job_id=job_id)
    if job.status in (S.validating_files, S.queued, S.running):
        if job.status == S.running:  # withdraw a pause the worker has not acted on yet
            dispatch.clear_control(settings, job_id)
            session.execute(update(Job).where(Job.id == job_id).values(pause_requested_at=None))
            session.commit()
        return job
    if job.status == S.failed and job.error_code not in RESUMABLE_ERRORS:
        raise Conflict(
            f"Job {job_id} failed with {job.error_code}, which running it again would not fix; correct the "
            "request and create a new job."
        )
    _check_quota(session, settings=settings, tenant=tenant)
    # A stale "pause" flag would pause the resumed run at its first step.
    dispatch.clear_control(settings, job_id)
    if job.status == S.failed:
        resumed = _resume_failed(session, job)
    else:
        resumed = transition(
            session,
            job_id=job_id,
            expected=(S.paused,),
            to=S.queued,
            message="Job resumed",
            dispatched_at=None,
            pause_requested_at=None,
        )
    if not resumed:
        raise Conflict(
            f"Job {job_id} is {session.scalar(_status(job_id))}; only a paused job, or one that failed "
            "through no fault of the request, can be resumed."
        )
    session.commit()
    _dispatch(session, settings=settings, job=job)
    return job


def _resume_failed(session: Session, job: Job) -> bool:
    """failed → queued with the error cleared and the attempts renewed (the event keeps the old ones)."""
    step = session.scalar(select(last_checkpoint_step(job.id)))
    start = f"the checkpoint at step {step}" if step else "the start"
    return transition(
        session,
        job_id=job.id,
        expected=(S.failed,),
        where=[Job.error_code.in_(RESUMABLE_ERRORS)],
        to=S.queued,
        message=f"Job resumed after failing with {job.error_code}; it continues from {start} with its "
        f"attempts renewed",
        data={
            "code": job.error_code,
            "attempt": job.attempt,
            "worker_losses": job.worker_losses,
            "checkpoint_step": step,
        },
        attempt=0,
        worker_losses=0,
        error_code=None,
        error_message=None,
        error_param=None,
        finished_at=None,
        dispatched_at=None,
        pause_requested_at=None,
    )


def _status(job_id: str) -> Select[str]:
    return select(Job.status).where(Job.id == job_id)


def _try_control(settings: Settings, job_id: str, value: str) -> None:
    try:
        dispatch.set_control(settings, job_id, value)
    except Exception:  # the DB transition alone still stops the worker (see the module docstring)
        log.warning("could not set the %s flag for job %s in Redis", value, job_id, exc_info=True)


def list_events(
    session: Session, *, tenant: Tenant, job_id: str, after: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    get_job(session, tenant=tenant, job_id=job_id)
    # seq, not created_at: events written within the same second keep the order they were written in.
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    return page(session, query, key=JobEvent.seq, ident=JobEvent.id, after=after, limit=limit)


def list_checkpoints(
    session: Session, *, tenant: Tenant, job_id: str, after: str | None, limit: int
) -> tuple[list[Checkpoint], bool]:
    get_job(session, tenant=tenant, job_id=job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job_id)
    return page(session, query, key=Checkpoint.step_number, ident=Checkpoint.id, after=after, limit=limit)
