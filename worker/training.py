"""Run one fine-tuning job: claim it, map it to a RunConfig, run the engine with the job's reporter, record
the outcome. The Celery task (worker/tasks.py) only calls `run_job`.

Outcomes: completed → succeeded (fine-tuned model, adapter, result CSV); paused → paused (the engine has
written its checkpoint); cancelled → nothing to write (the API already marked the job cancelled, or the
job was taken from this worker); EngineError → failed with the engine's code, message and param;
anything else → failed with `internal_error` (details in the worker log, never a traceback for users).
Every DB step retries through dropped connections (worker/dbretry.py); when the database stays away longer
than `db_retry_s`, the job is left to the reaper (its heartbeat stops, so it is requeued), never failed.
"""

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import update

from core.db import get_sessionmaker
from core.lifecycle import transition
from core.models import Job, JobStatus
from core.queues import control_key
from core.settings import Settings
from core.storage import artifact_store
from jobspec.hyperparameters import request_param
from worker.alarms import AlarmBook
from worker.artifacts import fetch_inputs, restore_run
from worker.dbretry import is_connection_error, retrying
from worker.engine.callbacks import TrainingResult
from worker.engine.checkpoint import list_checkpoints
from worker.engine.config import RunConfig
from worker.engine.errors import AdapterLoadError, EngineError
from worker.engine.run import run_training
from worker.inputs import check_prompts
from worker.jobs import (
    claim_job,
    fail_job,
    fine_tuned_model_name,
    pause_job,
    requeue_job,
    succeed_job,
    worker_identity,
)
from worker.lease import SHUTDOWN
from worker.preflight import OVERRIDE, check, grader_label, run_preflight, scored_model
from worker.preparing import reporting_preparation
from worker.reporting import JobReporter
from worker.runconfig import build_run_config
from worker.trackers import job_trackers
from worker.tracking import TrackedCallbacks

log = logging.getLogger(__name__)

INTERNAL_ERROR = (
    "internal_error",
    "The training run stopped on an unexpected error in the service; the operators have the details "
    "in the worker log. Retrying the job may help; if it fails again, please report it.",
)


def _user_error(exc: BaseException, job: Job) -> tuple[str, str, str | None] | None:
    """(code, message, param) of an error a user can act on, with the API's param names; else None."""
    if isinstance(exc, EngineError):
        if isinstance(exc, AdapterLoadError) and job.parent_model is not None:
            return (
                "model_not_found",
                f"The model '{job.parent_model}' this job continues could not be loaded: its adapter "
                "files are missing or incomplete. Continue another fine-tuned model or checkpoint, or ask "
                "the operator.",
                "model",
            )
        if exc.code == "model_not_found":  # the engine's message names server paths; say it in API terms
            return (
                "model_not_found",
                f"The base model '{job.base_model}' could not be loaded: its files in the model registry are "
                "missing or incomplete. Choose another model from GET /v1/models or ask the operator.",
                "model",
            )
        return exc.code, exc.message, request_param(exc.param)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (
            "out_of_memory",
            "The model did not fit in the worker's memory; use a smaller model, batch_size or "
            "max_response_tokens, or a worker with more memory.",
            None,
        )
    return None


def run_job(job_id: str, *, settings: Settings, worker_id: str | None = None) -> str:
    """Claim and run a job; returns the outcome for the log ("dropped" when the job was not queued)."""
    worker_id = worker_id or worker_identity()
    sessions = get_sessionmaker(settings.db_url)

    def claim() -> tuple[Job, str] | None:
        with sessions() as session:
            job = claim_job(session, job_id=job_id, worker_id=worker_id)
            return None if job is None else (job, fine_tuned_model_name(session, job))

    claimed = retrying(claim, what=f"claim of job {job_id}", deadline_s=settings.db_retry_s)
    if claimed is None:
        log.info("job %s is not queued (duplicate or stale message); dropped", job_id)
        return "dropped"
    job, model_name = claimed
    reporter = JobReporter(
        job_id=job_id,
        worker_id=worker_id,
        model_name=model_name,
        store=artifact_store(settings),
        sessions=sessions,
        redis_client=redis.Redis.from_url(
            str(settings.redis_url), socket_connect_timeout=2, socket_timeout=5
        ),
        heartbeat_interval_s=settings.heartbeat_interval_s,
        alarms=AlarmBook.restore(settings.alarm_window_steps, job.alarms),
        db_retry_s=settings.db_retry_s,
    )
    log.info("job %s claimed by %s (attempt %d)", job_id, worker_id, job.attempt)
    try:
        return _run(job, settings=settings, reporter=reporter, model_name=model_name)
    finally:
        reporter.close()


def _run(job: Job, *, settings: Settings, reporter: JobReporter, model_name: str) -> str:
    try:
        result = _prepare_and_train(job, settings=settings, reporter=reporter)
    except Exception as exc:
        return _failed(job, exc, settings=settings, reporter=reporter)
    try:
        return _record(job, result, settings=settings, reporter=reporter, model_name=model_name)
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        return _abandoned(job)


def _prepare_and_train(job: Job, *, settings: Settings, reporter: JobReporter) -> TrainingResult:
    """The job's run config and inputs, its preflight on a first start, then the engine's run."""
    config, resolved = retrying(
        lambda: _configure(job, settings=settings, reporter=reporter),
        what=f"job {job.id}",
        deadline_s=settings.db_retry_s,
    )
    fetch_inputs(reporter.store, config)  # outside any DB session: these may be downloads
    restore_run(reporter.store, Path(config.output_dir))
    check_prompts(config)
    reporter.alarms.grader = grader_label(config.grader)
    reporter.alarms.max_response_tokens = config.max_response_tokens
    # a resumed or requeued job passed its preflight before (a resumed warm start has no parent to score)
    if job.current_step == 0 and not list_checkpoints(Path(config.output_dir)):
        _preflight(job, config, settings=settings, reporter=reporter)
    return _train(job, config, settings=settings, reporter=reporter, hyperparameters=resolved)


def _configure(job: Job, *, settings: Settings, reporter: JobReporter) -> tuple[RunConfig, dict[str, Any]]:
    with (
        get_sessionmaker(settings.db_url)() as session,
        reporting_preparation(job.base_model, _detail(reporter)),
    ):
        config, resolved = build_run_config(session, settings=settings, job=job)
        session.execute(update(Job).where(*reporter.lease.owned).values(resolved_hyperparameters=resolved))
        session.commit()
    return config, resolved


def _failed(job: Job, exc: Exception, *, settings: Settings, reporter: JobReporter) -> str:
    """Record the job's failure on `exc` (called in its `except` block, so the log keeps the traceback)."""
    if is_connection_error(exc):
        return _abandoned(job)
    error = _user_error(exc, job)
    if error is None:
        log.exception("job %s failed unexpectedly", job.id)
        error = (*INTERNAL_ERROR, None)
    else:
        log.warning("job %s failed: %s", job.id, exc)
    if reporter.lease.lost:
        return "lost"
    with contextlib.suppress(Exception):
        reporter.flush()
    code, message, param = error

    def fail() -> None:
        with get_sessionmaker(settings.db_url)() as session:
            fail_job(session, job_id=job.id, worker_id=reporter.lease.worker_id, code=code, message=message,
                     param=param)  # fmt: skip

    retrying(fail, what=f"job {job.id}", deadline_s=settings.db_retry_s)
    return "failed"


def _abandoned(job: Job) -> str:
    log.error("job %s: the database stayed unreachable; the reaper requeues the job", job.id)
    return "abandoned (database unreachable)"


def _train(
    job: Job, config: RunConfig, *, settings: Settings, reporter: JobReporter, hyperparameters: dict[str, Any]
) -> TrainingResult:
    """The engine's run, reported to the job and to its experiment trackers (whose runs end with it)."""
    trackers = job_trackers(job, settings=settings, hyperparameters=hyperparameters)
    callbacks = TrackedCallbacks(reporter, trackers, finish_timeout_s=settings.tracker_timeout_s)
    try:
        result = run_training(config, callbacks)
    except BaseException:
        callbacks.close("failed")
        raise
    callbacks.close(result.status)
    return result


def _detail(reporter: JobReporter) -> Callable[[str, bool], None]:
    return lambda text, as_event: reporter.detail(text, event=as_event)


def _preflight(job: Job, config: RunConfig, *, settings: Settings, reporter: JobReporter) -> None:
    """Score the model the job starts from with its grader; raises (the job fails) on a constant reward."""
    scored = scored_model(job.parent_model)
    reporter.detail(f"preflight: scoring {scored} on training items with the {grader_label(config.grader)}")
    result = run_preflight(config, max_items=settings.preflight_items)
    warning = check(result, config.grader, override=bool(job.hyperparameters.get(OVERRIDE)), model=scored)
    if warning is not None:
        reporter.event(warning, level="warn", data={"code": "grader_constant_reward"})
    else:
        reporter.event(
            f"Preflight: the mean reward of {scored} is {result.reward_mean:.3f} over {result.completions} "
            f"completions of {result.items} training items with the {grader_label(config.grader)}",
            data={"preflight/reward_mean": result.reward_mean},
        )
    reporter.detail(None)


def _record(job: Job, result: Any, *, settings: Settings, reporter: JobReporter, model_name: str) -> str:
    if not reporter.flush():
        log.info("job %s was cancelled or taken over while running; its outcome is not recorded", job.id)
        reporter.flush_after_cancel()
        return "lost"
    if result.final_adapter_dir is not None:  # in the store before the fine-tuned model row names it
        reporter.store.publish(reporter.store.key_of(result.final_adapter_dir))
    return retrying(
        lambda: _outcome(job, result, settings=settings, reporter=reporter, model_name=model_name),
        what=f"outcome of job {job.id}",
        deadline_s=settings.db_retry_s,
    )


def _outcome(job: Job, result: Any, *, settings: Settings, reporter: JobReporter, model_name: str) -> str:
    """One transaction recording how the run ended (retried whole after a dropped connection)."""
    lease = reporter.lease
    with get_sessionmaker(settings.db_url)() as session:
        asked = lease.pause_requested or _pause_requested(settings, job.id)
        if result.status == "paused" and SHUTDOWN.is_set() and not asked:
            done = requeue_job(session, job_id=job.id, worker_id=lease.worker_id, step=result.final_step)
            return "requeued (worker shutdown)" if done else "lost"
        if result.status == "paused":
            done = pause_job(session, job_id=job.id, worker_id=lease.worker_id, step=result.final_step)
            _clear_control(settings, job.id)
            return "paused" if done else "lost"
        if result.status == "cancelled":
            # A cancel that reached us only through Redis (the API writes `cancelled` itself): make it so.
            transition(
                session,
                job_id=job.id,
                expected=(JobStatus.running,),
                to=JobStatus.cancelled,
                message=f"Job cancelled at step {result.final_step}",
                where=[Job.worker_id == lease.worker_id],
                estimated_finish=None,
            )
            session.commit()
            return "cancelled"
        if result.final_adapter_dir is None:
            fail_job(session, job_id=job.id, worker_id=lease.worker_id, code=INTERNAL_ERROR[0],
                     message=INTERNAL_ERROR[1], param=None)  # fmt: skip
            return "failed"
        done = succeed_job(
            session,
            settings=settings,
            job=job,
            worker_id=lease.worker_id,
            model_name=model_name,
            adapter_dir=result.final_adapter_dir,
            final_step=result.final_step,
            trained_tokens=reporter.trained_tokens or 0,
            model_step=result.model_step,
            model_eval=dict(result.model_eval),
        )
    return "succeeded" if done else "lost"


def _pause_requested(settings: Settings, job_id: str) -> bool:
    try:
        client = redis.Redis.from_url(str(settings.redis_url), socket_connect_timeout=2)
        return bool(client.get(control_key(job_id)) == b"pause")
    except redis.RedisError:
        return False


def _clear_control(settings: Settings, job_id: str) -> None:
    try:
        redis.Redis.from_url(str(settings.redis_url), socket_connect_timeout=2).delete(control_key(job_id))
    except redis.RedisError:  # a stale "pause" is cleared again by resume
        log.warning("could not clear the control flag of job %s", job_id)
