"""`/v1/evaluations` (extension): score a base model, checkpoint or fine-tuned model on a file."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from app.api.deps import After, CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import JSONL, errors
from app.api.responses import artifact_download
from app.api.retry import ReadRetryRoute
from app.schemas.common import ListPublic
from app.schemas.evaluations import EvaluationCreate, EvaluationPublic
from app.services import evaluations

router = APIRouter(prefix="/evaluations", tags=["evaluations"], route_class=ReadRetryRoute)


@router.post("", response_model=EvaluationPublic, responses=errors(400, 413))
def create_evaluation(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, body: EvaluationCreate
) -> EvaluationPublic:
    created = evaluations.create_evaluation(session, settings=settings, tenant=tenant, request=body)
    return EvaluationPublic.of(created)


@router.get("", response_model=ListPublic[EvaluationPublic], responses=errors(400))
def list_evaluations(
    session: SessionDep,
    tenant: CurrentTenant,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPublic[EvaluationPublic]:
    rows, has_more = evaluations.list_evaluations(session, tenant=tenant, after=after, limit=limit)
    return ListPublic.page(
        [EvaluationPublic.of(e) for e in rows], has_more=has_more, ids=[e.id for e in rows]
    )


@router.get("/{evaluation_id}", response_model=EvaluationPublic, responses=errors(400, 404))
def retrieve_evaluation(session: SessionDep, tenant: CurrentTenant, evaluation_id: str) -> EvaluationPublic:
    return EvaluationPublic.of(
        evaluations.get_evaluation(session, tenant=tenant, evaluation_id=evaluation_id)
    )


@router.get(
    "/{evaluation_id}/results", response_class=FileResponse, responses={200: JSONL, **errors(400, 404)}
)
def evaluation_results(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, evaluation_id: str
) -> Response:
    evaluation = evaluations.get_evaluation(session, tenant=tenant, evaluation_id=evaluation_id)
    return artifact_download(
        settings,
        key=evaluations.results_key(settings, evaluation),
        media_type="application/jsonl",
        filename=f"{evaluation.id}-results.jsonl",
    )
