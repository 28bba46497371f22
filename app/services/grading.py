"""Graders as the service uses them: the `grading` context of a tenant's grader, and the graders API.

The grading runtime (`grading`) is torch-free, so `POST /v1/fine_tuning/alpha/graders/run` grades in the
API process itself: rule and similarity graders in process, Python graders in the same OS sandbox a
training job uses (a separate process), judges and embeddings over HTTP.
"""

import threading
from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidRequest, QuotaExceeded
from app.services.files import missing_item_paths
from core.grading_context import GradingSetupError, grading_context
from core.models import File, Tenant
from core.settings import Settings
from grading.build import GraderConfigError, build_grader, parse_grader
from grading.context import GradingContext
from grading.result import GradeResult, openai_errors
from grading.sandbox import SandboxUnavailable
from jobspec.walk import grader_item_paths, judge_models


def check_grader(
    session: Session, *, settings: Settings, tenant: Tenant, grader: Any, files: list[File], param: str
) -> None:
    """What job and evaluation creation check of a grader: every item path its templates read is on every
    line of each file, and its judge and embeddings models are reachable for this tenant."""
    for template_param, paths in grader_item_paths(grader, param).items():
        for file in files:
            missing = missing_item_paths(file, paths)
            if missing:
                raise InvalidRequest(
                    f"Grader template references item field(s) {missing} that not every line of "
                    f"file '{file.id}' has (fields on every line: {list(file.item_fields)}).",
                    param=template_param,
                )
    _context(session, settings=settings, tenant=tenant, grader=grader, param=param)


def _context(
    session: Session, *, settings: Settings, tenant: Tenant, grader: Any, param: str
) -> dict[str, Any]:
    try:
        return grading_context(session, settings=settings, tenant_id=tenant.id, grader=grader, param=param)
    except GradingSetupError as exc:
        raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None


def validate_grader(spec: Any) -> Any:
    """The grader as a `jobspec` model; InvalidRequest naming the field when it is not valid."""
    try:
        return parse_grader(spec)
    except GraderConfigError as exc:
        raise InvalidRequest(f"Invalid grader: {exc}", param=exc.param) from None


_running: dict[int, threading.BoundedSemaphore] = {}
_running_lock = threading.Lock()


def _run_slot(settings: Settings) -> threading.BoundedSemaphore:
    """The process's grader-run slots: a run holds an API thread for as long as its sandbox or judge takes,
    so they are bounded apart from the thread pool every other request needs."""
    with _running_lock:
        return _running.setdefault(
            settings.grader_runs_concurrency, threading.BoundedSemaphore(settings.grader_runs_concurrency)
        )


def run_grader(
    session: Session,
    *,
    settings: Settings,
    tenant: Tenant,
    spec: Any,
    model_sample: str,
    item: dict[str, Any],
) -> dict[str, Any]:
    """OpenAI's GraderRunResponse for one sample: the reward, its metadata and the sub-rewards."""
    grader_model = validate_grader(spec)
    context = _context(session, settings=settings, tenant=tenant, grader=grader_model, param="grader")
    context["python_pool_size"] = 1
    session.close()  # grading waits on sandboxes and judges: hold no DB connection meanwhile
    key = settings.judge_api_key.get_secret_value() if settings.judge_api_key else None
    server_key = settings.inference_secret.get_secret_value() if settings.inference_secret else None
    slot = _run_slot(settings)
    if not slot.acquire(blocking=False):  # before building: a busy server starts no sandbox
        busy = QuotaExceeded(
            f"{settings.grader_runs_concurrency} grader runs are in progress on this server; retry shortly.",
            code="grader_runs_busy",
        )
        busy.retry_after = 1
        raise busy
    try:
        try:
            grader = build_grader(
                grader_model, GradingContext.from_dict(context, api_key=key, model_server_key=server_key)
            )
        except GraderConfigError as exc:
            raise InvalidRequest(f"Invalid grader: {exc}", param=exc.param) from None
        except SandboxUnavailable as exc:
            raise InvalidRequest(f"Python graders cannot run here: {exc}", param="grader",
                                 code="python_grader_unavailable") from None  # fmt: skip
        try:
            result = grader.grade([(item, model_sample)])[0]
        finally:
            grader.close()
    finally:
        slot.release()
    return run_response(grader_model, result)


def run_response(grader: Any, result: GradeResult) -> dict[str, Any]:
    """A GradeResult in OpenAI's GraderRunResponse shape."""
    errors = openai_errors(result.errors)
    models = judge_models(grader)
    return {
        "reward": result.reward,
        "metadata": {
            "name": grader.name,
            "type": grader.type,
            "errors": errors,
            "execution_time": result.execution_time,
            "scores": result.scores,
            "token_usage": result.token_usage if models else None,
            "sampled_model_name": None,
        },
        "sub_rewards": result.sub_rewards,
        "model_grader_token_usage_per_model": (
            {models[0]: {"total_tokens": result.token_usage}} if len(set(models)) == 1 else {}
        ),
    }
