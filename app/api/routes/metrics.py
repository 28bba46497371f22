"""`/v1/fine_tuning/jobs/{id}`: metric series, live metrics (Server-Sent Events) and adapter downloads."""

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.schemas.progress import MetricPointPublic, MetricSeriesPublic
from app.services import progress
from app.services.jobs import get_job

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])


@router.get("/{job_id}/metrics", response_model=MetricSeriesPublic)
def list_metrics(
    session: SessionDep,
    tenant: CurrentTenant,
    job_id: str,
    after_step: Annotated[int | None, Query(ge=0, description="Only steps after this one.")] = None,
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


@router.get("/{job_id}/metrics/stream", response_class=StreamingResponse)
def stream_metrics(
    session: SessionDep,
    settings: SettingsDep,
    tenant: CurrentTenant,
    job_id: str,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    get_job(session, tenant=tenant, job_id=job_id)
    cursor = progress.check_stream_cursor(last_event_id)
    return StreamingResponse(
        progress.metric_events(settings, job_id=job_id, cursor=cursor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/checkpoints/{checkpoint_id}/adapter", response_class=FileResponse)
def download_adapter(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, job_id: str, checkpoint_id: str
) -> FileResponse:
    checkpoint = progress.get_checkpoint(session, tenant=tenant, job_id=job_id, checkpoint_id=checkpoint_id)
    archive = progress.adapter_archive(settings, checkpoint)
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"{checkpoint.id}.tar.gz",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )
