"""Unauthenticated probes: `/health` (process up), `/ready` (DB and Redis reachable), `/metrics`."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from app import metrics as service_metrics
from app.api.deps import SessionDep, SettingsDep
from app.api.openapi import errors
from app.dispatch import redis_client

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "The database or Redis is unreachable."}})
def ready(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # a probe reports failures, it does not raise them
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis_client(str(settings.redis_url)).ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses=errors(503))
def metrics(session: SessionDep, settings: SettingsDep) -> Response:
    body = service_metrics.render(session, redis_client(str(settings.redis_url)))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
