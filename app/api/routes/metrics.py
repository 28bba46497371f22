"""`/v1/fine_tuning/jobs/{id}`: metric series, live metrics (Server-Sent Events), the samples the policy
wrote, and adapter downloads."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse

from app.api import responses
from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.api.openapi import ARCHIVE, EVENT_STREAM, errors
from app.api.retry import ReadRetryRoute
from app.schemas.progress import MetricPointPublic, MetricSeriesPublic
from app.schemas.samples import SampleSeriesPublic, StepSamplesPublic
from app.services import progress, samples

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"], route_class=ReadRetryRoute)
# Step numbers are 64-bit in the database: a larger cursor would be a database error, not an empty page.
MAX_STEP = 2**63 - 1


@router.get("/{job_id}/metrics", response_model=MetricSeriesPublic, responses=errors(400, 404))
def list_metrics(
    session: SessionDep,
    tenant: CurrentTenant,
    job_id: str,
    after_step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="Only steps after this one.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> MetricSeriesPublic:
    points, has_more = progress.list_metrics(
        session, tenant=tenant, job_id=job_id, after_step=after_step, limit=limit
    )
    return MetricSeriesPublic(
        data=[MetricPointPublic.of(p) for p in points],
        has_more=has_more,
        last_step=points[-1].step if points else None,
    )


@router.get("/{job_id}/samples", response_model=SampleSeriesPublic, responses=errors(400, 404))
def list_samples(
    session: SessionDep,
    tenant: CurrentTenant,
    job_id: str,
    after_step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="Only steps after this one.")
    ] = None,
    step: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="Only this step.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Steps per page.")] = 10,
) -> SampleSeriesPublic:
    steps, has_more = samples.list_samples(
        session, tenant=tenant, job_id=job_id, after_step=after_step, step=step, limit=limit
    )
    return SampleSeriesPublic(
        data=[StepSamplesPublic.of(s, rows) for s, rows in steps],
        has_more=has_more,
        last_step=steps[-1][0] if steps else None,
    )


@router.get(
    "/{job_id}/metrics/stream",
    response_class=StreamingResponse,
    responses={200: EVENT_STREAM, **errors(400, 404)},
)
def stream_metrics(
    session: SessionDep,
    settings: SettingsDep,
    tenant: CurrentTenant,
    job_id: str,
    last_event_id: responses.LastEventId = None,
    start: responses.StreamFrom = None,
) -> StreamingResponse:
    return responses.metric_stream(
        session,
        settings=settings,
        tenant=tenant,
        job_id=job_id,
        last_event_id=last_event_id,
        start=start,
    )


@router.get(
    "/{job_id}/checkpoints/{checkpoint_id}/adapter",
    response_class=FileResponse,
    responses={200: ARCHIVE, **errors(400, 404)},
)
def download_adapter(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, job_id: str, checkpoint_id: str
) -> FileResponse:
    return responses.adapter_download(
        session, settings=settings, tenant=tenant, job_id=job_id, checkpoint_id=checkpoint_id
    )
