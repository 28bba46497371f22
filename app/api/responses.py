"""HTTP responses shared by the JSON API and the dashboard: the live metrics stream, adapter archives and
stored artifacts.

Both surfaces authorize first (Bearer key or session cookie), then hand over to these.
"""

from collections.abc import Iterator
from typing import IO, Annotated
from urllib.parse import quote

from fastapi import Header, Query
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from app.errors import NotFound
from app.services import live_metrics, progress
from app.services.jobs import get_job
from core.models import Tenant
from core.settings import Settings
from core.storage import artifact_store

_CHUNK = 1024 * 1024

# Where a metrics stream starts, as both stream routes take it.
LastEventId = Annotated[
    str | None,
    Header(max_length=64, description="The id of the last event received: the stream resumes after it."),
]
StreamFrom = Annotated[
    str | None,
    Query(
        alias="from",
        max_length=64,
        description="An event id (a stream id, or `step-<N>` for the last step the client has, e.g. from "
        "`/metrics`): the stream starts after it; `0-0`: from the stream's start. Without this or "
        "Last-Event-ID: the newest `SPPO_STREAM_TAIL_RECORDS` records (100), then each new step.",
    ),
]


def metric_stream(
    session: Session,
    *,
    settings: Settings,
    tenant: Tenant,
    job_id: str,
    last_event_id: str | None,
    start: str | None,
) -> StreamingResponse:
    """Server-Sent Events of a job's step metrics after `Last-Event-ID`, else after `start` (the `from`
    parameter), else from the stream's newest `stream_tail_records`."""
    get_job(session, tenant=tenant, job_id=job_id)  # 404 for another tenant's job, before streaming
    cursor = live_metrics.stream_cursor(last_event_id, start, tail=settings.stream_tail_records)
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
    job = get_job(session, tenant=tenant, job_id=job_id)
    session.close()  # the rows stay readable; no DB connection is held while the store is read
    archive = progress.adapter_archive(settings, checkpoint, job)
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"{checkpoint.id}.tar.gz",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


def artifact_download(settings: Settings, *, key: str, media_type: str, filename: str) -> Response:
    """A stored artifact as an attachment: sent from the local file, or streamed from the store."""
    store = artifact_store(settings)
    if store.is_local:
        return FileResponse(store.local_path(key), media_type=media_type, filename=filename)
    try:
        handle = store.open(key)
    except FileNotFoundError:
        raise NotFound(f"The content of '{filename}' is no longer stored.") from None
    return StreamingResponse(
        _chunks(handle), media_type=media_type, headers={"Content-Disposition": _attachment(filename)}
    )


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _attachment(filename: str) -> str:
    # As Starlette's FileResponse writes it: RFC 6266's filename* for names that are not plain ASCII.
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'
