"""HTTP responses shared by the JSON API and the dashboard: the live metrics stream and adapter archives.

Both surfaces authorize first (Bearer key or session cookie), then hand over to these.
"""

from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from app.models import Tenant
from app.services import live_metrics, progress
from app.services.jobs import get_job
from app.settings import Settings


def metric_stream(
    session: Session, *, settings: Settings, tenant: Tenant, job_id: str, last_event_id: str | None
) -> StreamingResponse:
    """Server-Sent Events of a job's step metrics, resumable from `Last-Event-ID`."""
    get_job(session, tenant=tenant, job_id=job_id)  # 404 for another tenant's job, before streaming
    cursor = live_metrics.check_stream_cursor(last_event_id)
    return StreamingResponse(
        live_metrics.metric_events(settings, job_id=job_id, cursor=cursor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def adapter_download(
    session: Session, *, settings: Settings, tenant: Tenant, job_id: str, checkpoint_id: str
) -> FileResponse:
    """A checkpoint's peft adapter as a .tar.gz, deleted once sent."""
    checkpoint = progress.get_checkpoint(session, tenant=tenant, job_id=job_id, checkpoint_id=checkpoint_id)
    archive = progress.adapter_archive(settings, checkpoint, get_job(session, tenant=tenant, job_id=job_id))
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"{checkpoint.id}.tar.gz",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )
