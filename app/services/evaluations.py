"""Evaluations: validate, resolve the model to (base model, adapter), queue on the evaluation queue, read.

The model name is resolved here, tenant-scoped, and the result is stored with the evaluation, so the
worker never resolves a name a tenant could not see.
"""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import dispatch
from app.errors import InvalidRequest, NotFound, ServiceUnavailable
from app.schemas.evaluations import EvaluationCreate
from app.services.context import check_file_context
from app.services.files import get_file
from app.services.grading import check_grader
from app.services.pagination import page
from core.model_targets import find_model_target
from core.models import Evaluation, JobStatus, Tenant, now
from core.registry import find_base_model
from core.settings import Settings
from core.storage import artifact_store
from core.webhooks import enqueue_evaluation_event


def resolve_model(
    session: Session, *, settings: Settings, tenant: Tenant, name: str
) -> tuple[str, str | None]:
    """(base model name, adapter uri or None) for a base model, fine-tuned model or checkpoint name."""
    target = find_model_target(session, settings=settings, tenant_id=tenant.id, model=name)
    if target is None:
        raise InvalidRequest(
            f"Model '{name}' is not a base model, fine-tuned model or checkpoint you can use; "
            "see GET /v1/models.",
            param="model",
            code="model_not_found",
        )
    return target.base_model, target.adapter_uri


def create_evaluation(
    session: Session, *, settings: Settings, tenant: Tenant, request: EvaluationCreate
) -> Evaluation:
    base_model, adapter_uri = resolve_model(session, settings=settings, tenant=tenant, name=request.model)
    try:
        file = get_file(session, tenant=tenant, file_id=request.file)
    except NotFound:
        raise InvalidRequest(f"No such file: '{request.file}'.", param="file", code="invalid_file") from None
    entry = find_base_model(settings, base_model)
    if entry is not None:
        session.commit()  # the check may read the file: no DB connection is held meanwhile
        check_file_context(settings, entry, file, param="file")
    check_grader(
        session, settings=settings, tenant=tenant, grader=request.grader, files=[file], param="grader"
    )
    if adapter_uri is not None and not _stored(settings, adapter_uri):
        raise InvalidRequest(f"The adapter of '{request.model}' is no longer stored.", param="model")
    evaluation = Evaluation(
        tenant_id=tenant.id,
        status=JobStatus.queued,
        model=request.model,
        file_id=file.id,
        grader=request.grader.model_dump(mode="json"),
        samples=request.samples,
        params={
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_response_tokens": request.max_response_tokens,
            "base_model": base_model,
            "adapter_uri": adapter_uri,
        },
        metadata_=request.metadata,
    )
    session.add(evaluation)
    session.commit()
    if not dispatch.send_evaluation_task(settings, evaluation.id):
        evaluation.status = JobStatus.failed
        evaluation.error_code = "queue_unreachable"
        evaluation.error_message = (
            "The evaluation queue (Redis) was unreachable; create the evaluation again."
        )
        evaluation.finished_at = now()
        enqueue_evaluation_event(session, evaluation_id=evaluation.id, status=JobStatus.failed)
        session.commit()
        raise ServiceUnavailable(evaluation.error_message)
    evaluation.dispatched_at = now()
    session.commit()
    return evaluation


def _stored(settings: Settings, uri: str) -> bool:
    return artifact_store(settings).exists(uri)


def get_evaluation(session: Session, *, tenant: Tenant, evaluation_id: str) -> Evaluation:
    evaluation = session.scalar(
        select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.tenant_id == tenant.id)
    )
    if evaluation is None:
        raise NotFound(f"No evaluation with id '{evaluation_id}'.", param="evaluation_id")
    return evaluation


def list_evaluations(
    session: Session, *, tenant: Tenant, after: str | None, limit: int
) -> tuple[list[Evaluation], bool]:
    query = select(Evaluation).where(Evaluation.tenant_id == tenant.id)
    return page(session, query, key=Evaluation.created_at, ident=Evaluation.id, after=after, limit=limit)


def results_key(settings: Settings, evaluation: Evaluation) -> str:
    """The artifact key of the evaluation's per-item results; 404 when there are none (any longer)."""
    if evaluation.result_uri is None:
        raise NotFound(f"Evaluation '{evaluation.id}' has no results yet.", param="evaluation_id")
    if not artifact_store(settings).exists(evaluation.result_uri):
        raise NotFound(f"The results of evaluation '{evaluation.id}' are no longer stored.")
    return evaluation.result_uri
