"""`/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events and checkpoints."""

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import After, CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import errors
from app.api.retry import ReadRetryRoute
from app.errors import InvalidRequest
from app.schemas.common import ListPublic
from app.schemas.jobs import CheckpointPublic, EventPublic, JobCreate, JobPublic
from app.services import jobs

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"], route_class=ReadRetryRoute)

_METADATA_PARAM = re.compile(r"^metadata\[(.{1,64})\]$")


def _metadata_filter(request: Request) -> dict[str, str]:
    """`?metadata[team]=nlp&metadata[run]=3` → {"team": "nlp", "run": "3"} (OpenAI's filter syntax)."""
    found: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata"):
            match = _METADATA_PARAM.match(key)
            if match is None:
                raise InvalidRequest("Filter by metadata as metadata[key]=value.", param=key)
            found[match.group(1)] = value
    return found


@router.post("", response_model=JobPublic, responses=errors(400, 404, 413))
def create_job(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, body: JobCreate
) -> JobPublic:
    return JobPublic.of(jobs.create_job(session, settings=settings, tenant=tenant, request=body))


@router.get("", response_model=ListPublic[JobPublic], responses=errors(400))
def list_jobs(
    request: Request,
    session: SessionDep,
    tenant: CurrentTenant,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPublic[JobPublic]:
    rows, has_more = jobs.list_jobs(
        session, tenant=tenant, after=after, limit=limit, metadata=_metadata_filter(request)
    )
    return ListPublic.page([JobPublic.of(j) for j in rows], has_more=has_more, ids=[j.id for j in rows])


@router.get("/{job_id}", response_model=JobPublic, responses=errors(400, 404))
def retrieve_job(session: SessionDep, tenant: CurrentTenant, job_id: str) -> JobPublic:
    return JobPublic.of(jobs.get_job(session, tenant=tenant, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(400, 404, 409))
def cancel_job(session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, job_id: str) -> JobPublic:
    return JobPublic.of(jobs.cancel_job(session, settings=settings, tenant=tenant, job_id=job_id))


@router.post("/{job_id}/pause", response_model=JobPublic, responses=errors(400, 404, 409))
def pause_job(session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, job_id: str) -> JobPublic:
    return JobPublic.of(jobs.pause_job(session, settings=settings, tenant=tenant, job_id=job_id))


@router.post("/{job_id}/resume", response_model=JobPublic, responses=errors(400, 404, 409))
def resume_job(session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, job_id: str) -> JobPublic:
    return JobPublic.of(jobs.resume_job(session, settings=settings, tenant=tenant, job_id=job_id))


@router.get("/{job_id}/events", response_model=ListPublic[EventPublic], responses=errors(400, 404))
def list_events(
    session: SessionDep,
    tenant: CurrentTenant,
    job_id: str,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPublic[EventPublic]:
    rows, has_more = jobs.list_events(session, tenant=tenant, job_id=job_id, after=after, limit=limit)
    return ListPublic.page([EventPublic.of(e) for e in rows], has_more=has_more, ids=[e.id for e in rows])


@router.get("/{job_id}/checkpoints", response_model=ListPublic[CheckpointPublic], responses=errors(400, 404))
def list_checkpoints(
    session: SessionDep,
    tenant: CurrentTenant,
    job_id: str,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPublic[CheckpointPublic]:
    rows, has_more = jobs.list_checkpoints(session, tenant=tenant, job_id=job_id, after=after, limit=limit)
    return ListPublic.page(
        [CheckpointPublic.of(c) for c in rows], has_more=has_more, ids=[c.id for c in rows]
    )
