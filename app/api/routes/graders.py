"""`/v1/fine_tuning/alpha/graders`: check a grader, and grade one sample with it (OpenAI's graders API)."""

from fastapi import APIRouter

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import errors
from app.schemas.graders import (
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
)
from app.services import grading

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["graders"])


@router.post("/validate", response_model=GraderValidateResponse, responses=errors(400))
def validate_grader(tenant: CurrentTenant, body: GraderValidateRequest) -> GraderValidateResponse:
    return GraderValidateResponse(grader=body.grader.model_dump(mode="json", exclude_none=True))


@router.post("/run", response_model=GraderRunResponse, responses=errors(400))
def run_grader(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, body: GraderRunRequest
) -> GraderRunResponse:
    result = grading.run_grader(
        session, settings=settings, tenant=tenant, spec=body.grader, model_sample=body.model_sample,
        item=body.item,
    )  # fmt: skip
    return GraderRunResponse.model_validate(result)
