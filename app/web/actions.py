"""Dashboard actions: cancel/pause/resume (CSRF-checked POSTs), the live metrics stream and adapter downloads.

Each calls the same service as its JSON API twin (`POST /v1/fine_tuning/jobs/{id}/cancel`, `.../metrics/
stream`, `.../checkpoints/{id}/adapter`) but authenticates with the session cookie, since a browser's
EventSource and download links cannot send a Bearer header.
"""

from typing import Literal

from fastapi import APIRouter, Request, Response

from app.api import responses
from app.api.deps import SessionDep, SettingsDep
from app.services import jobs
from app.web.render import PageRoute, redirect
from app.web.session import CsrfChecked, WebTenant

router = APIRouter(route_class=PageRoute, include_in_schema=False)

_CONTROLS = {"cancel": jobs.cancel_job, "pause": jobs.pause_job, "resume": jobs.resume_job}


@router.post("/jobs/{job_id}/{action}", dependencies=[CsrfChecked])
def control_job(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: WebTenant,
    job_id: str,
    action: Literal["cancel", "pause", "resume"],
) -> Response:
    _CONTROLS[action](session, settings=settings, tenant=tenant, job_id=job_id)
    return redirect(request, f"/jobs/{job_id}")


@router.get("/ui/jobs/{job_id}/stream")
def job_stream(
    session: SessionDep,
    settings: SettingsDep,
    tenant: WebTenant,
    job_id: str,
    last_event_id: responses.LastEventId = None,
    start: responses.StreamFrom = None,
) -> Response:
    """The API's live metrics stream (the generator of `GET /v1/.../metrics/stream`), by cookie."""
    # The page asks `from` the last step it has; on a reconnect EventSource resends the last id it got,
    # which wins, so the stream resumes where it broke off.
    return responses.metric_stream(
        session,
        settings=settings,
        tenant=tenant,
        job_id=job_id,
        last_event_id=last_event_id,
        start=start,
    )


@router.get("/ui/jobs/{job_id}/checkpoints/{checkpoint_id}/adapter")
def download_adapter(
    session: SessionDep, settings: SettingsDep, tenant: WebTenant, job_id: str, checkpoint_id: str
) -> Response:
    """The same archive as `GET /v1/.../checkpoints/{id}/adapter`, for the page's download buttons."""
    return responses.adapter_download(
        session, settings=settings, tenant=tenant, job_id=job_id, checkpoint_id=checkpoint_id
    )
