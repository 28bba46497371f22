"""The ASGI application `app.main:app`: wiring only (app factory, routers, middleware, error handlers)."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI

from app.admission import AdmissionMiddleware, AuthFirstMiddleware
from app.api.openapi import AUTHENTICATED, errors, install_openapi
from app.api.routes import evaluations, files, graders, health, inference, jobs, metrics, models, webhooks
from app.errors import install_error_handlers
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.services.reaper import reap_once
from app.shutdown import watch_signals
from app.throttle import RateLimitMiddleware
from app.web import install_dashboard
from app.web.headers import SecurityHeadersMiddleware
from core.db import get_sessionmaker
from core.logs import configure_logging
from core.settings import get_settings

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
    # Sized with the DB pool and the admission limit (see app/admission.py and Settings).
    anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().thread_pool_size
    watch_signals()
    task = asyncio.create_task(_redispatch_loop())
    yield
    task.cancel()


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    app = FastAPI(title="SPPO Service", version="0.1.0", lifespan=lifespan)
    # Each router straight on the app, not under a `/v1` router: FastAPI matches a request again at every
    # level of included routers (to choose a route, then to run it), a share of every request's CPU.
    for module in (files, jobs, metrics, models, evaluations, inference, graders, webhooks):
        app.include_router(module.router, prefix="/v1", responses=errors(*AUTHENTICATED))
    app.include_router(health.router)
    install_dashboard(app)
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(
        BodyLimitMiddleware,
        # The new-job form carries a training and a validation file; each is also checked on its own.
        limits={
            "/v1/files": settings.max_upload_bytes,
            "/jobs/new": 2 * settings.max_upload_bytes,
            "/v1/chat/completions": settings.inference_max_request_bytes,
            "/v1/completions": settings.inference_max_request_bytes,
        },
        default=settings.max_json_body_bytes,
        timeout_s=settings.body_timeout_s,
        min_rate=settings.min_body_rate_bytes_s,
    )
    app.add_middleware(AuthFirstMiddleware, cache_s=settings.auth_cache_s)  # before a body byte is read
    app.add_middleware(
        AdmissionMiddleware, limit=settings.api_max_in_flight, timeout_s=settings.api_queue_timeout_s
    )
    app.add_middleware(RateLimitMiddleware, settings=settings)  # before any body is read
    app.add_middleware(SecurityHeadersMiddleware, settings=settings)
    app.add_middleware(RequestContextMiddleware)  # outermost: every response, even a 503, gets an id
    return app


app = create_app()
