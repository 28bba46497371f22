"""The ASGI application `app.main:app`: wiring only (app factory, routers, middleware, error handlers)."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from app.api.routes import evaluations, files, health, jobs, metrics, models
from app.db import get_sessionmaker
from app.errors import install_error_handlers
from app.logs import configure_logging
from app.middleware import RequestContextMiddleware, UploadLimitMiddleware
from app.services.reaper import reap_once
from app.settings import get_settings
from app.web import install_dashboard

log = logging.getLogger(__name__)


def _reap_once() -> None:
    with get_sessionmaker()() as session:
        reap_once(session, settings=get_settings())


async def _redispatch_loop() -> None:
    """Lost jobs are requeued, and queued jobs that missed the broker are sent again (app/services/reaper)."""
    while True:
        try:
            await asyncio.to_thread(_reap_once)
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("recovering lost jobs failed")
        await asyncio.sleep(get_settings().reaper_interval_s)


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(_redispatch_loop())
    yield
    task.cancel()


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    app = FastAPI(title="SPPO Service", version="0.1.0", lifespan=lifespan)
    v1 = APIRouter(prefix="/v1")
    for module in (files, jobs, metrics, models, evaluations):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    install_dashboard(app)
    install_error_handlers(app)
    app.add_middleware(UploadLimitMiddleware, path="/v1/files", max_bytes=settings.max_upload_bytes)
    # The new-job form carries a training and a validation file; each is also checked on its own.
    app.add_middleware(UploadLimitMiddleware, path="/jobs/new", max_bytes=2 * settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware)  # outermost: every response, even a 413, gets an id
    return app


app = create_app()
