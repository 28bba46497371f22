"""Dashboard actions: cancel/pause/resume (CSRF-checked POSTs) and the live metrics stream of a job page.

Controls call the same service functions as `POST /v1/fine_tuning/jobs/{id}/cancel|pause|resume`; the
stream is a cookie-authenticated Server-Sent Events feed, since a browser EventSource cannot send a
Bearer header.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import SessionDep, SettingsDep
from app.db import get_sessionmaker
from app.models import Tenant
from app.services import dashboard, jobs
from app.web.render import PageRoute, redirect
from app.web.session import CsrfChecked, WebTenant

router = APIRouter(route_class=PageRoute, include_in_schema=False)

POLL_S = 1.0
KEEPALIVE_S = 15.0

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


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _poll(tenant: Tenant, job_id: str, after_step: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """New metric points after `after_step`, and the job's current state (one short DB session)."""
    with get_sessionmaker()() as session:
        points = dashboard.metric_points(session, tenant=tenant, job_id=job_id, after_step=after_step)
        job = jobs.get_job(session, tenant=tenant, job_id=job_id)
        state = {
            "status": job.status,
            "current_step": job.current_step,
            "total_steps": job.total_steps,
            "finished": dashboard.is_finished(job),
        }
    return [p.as_json() for p in points], state


async def metric_events(request: Request, tenant: Tenant, job_id: str, after_step: int) -> AsyncIterator[str]:
    """`metrics` events as steps are persisted, `status` on every change, `end` once the job has finished."""
    last_state: dict[str, Any] = {}
    last_sent = time.monotonic()
    yield "retry: 3000\n\n"
    while not await request.is_disconnected():
        points, state = await asyncio.to_thread(_poll, tenant, job_id, after_step)
        for point in points:
            after_step = point["step"]
            yield _sse("metrics", point)
        changed = state != last_state
        if changed:
            last_state = state
            yield _sse("status", state)
        if points or changed:
            last_sent = time.monotonic()
        if state["finished"] and not points:
            yield _sse("end", state)
            return
        if time.monotonic() - last_sent > KEEPALIVE_S:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_S)


@router.get("/ui/jobs/{job_id}/stream")
def job_stream(
    request: Request, session: SessionDep, tenant: WebTenant, job_id: str, after: int = -1
) -> Response:
    jobs.get_job(session, tenant=tenant, job_id=job_id)  # 404 for another tenant's job, before streaming
    return StreamingResponse(
        metric_events(request, tenant, job_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
