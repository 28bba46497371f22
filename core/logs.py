"""Logs of the API and the workers through structlog: human-readable lines or one JSON object per line.

Every line carries the ids of what it is about: `request_id` and `tenant_id` in the API, `job_id` (or
`evaluation_id`) in a worker. They live in one mutable dict per request or task, held in a context
variable: FastAPI runs dependencies and routes in separate threads with *copies* of the request's
context, so an id bound by the auth dependency must be written into a dict they share, not re-bound.
Records of the standard `logging` module (uvicorn, Celery, SQLAlchemy, this code base) pass through the
same processors, so one format covers every line a process writes.
"""

import logging
import sys
from contextvars import ContextVar, Token
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor

LogFormat = Literal["console", "json"]

_ids: ContextVar[dict[str, str] | None] = ContextVar("sppo_log_ids", default=None)
_HANDLER_NAME = "sppo"


def new_log_context(**ids: str) -> Token[dict[str, str] | None]:
    """Start the ids of one unit of work (a request, a task); `reset_log_context` ends them."""
    return _ids.set(dict(ids))


def reset_log_context(token: Token[dict[str, str] | None]) -> None:
    _ids.reset(token)


def bind_log_ids(**ids: str) -> None:
    """Add ids to the current unit of work, visible to every thread that runs a part of it."""
    current = _ids.get()
    if current is None:
        _ids.set(dict(ids))
    else:
        current.update(ids)


def log_ids() -> dict[str, str]:
    return dict(_ids.get() or {})


def _add_ids(_logger: Any, _method: str, event: EventDict) -> EventDict:
    for name, value in (_ids.get() or {}).items():
        event.setdefault(name, value)
    return event


def configure_logging(*, level: str = "INFO", fmt: LogFormat = "console") -> None:
    """Route structlog and the standard library through one handler on the root logger (idempotent)."""
    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a library's warning is a log line too, in the same format
    # uvicorn installs its own handlers before it imports the app: send its lines through ours instead.
    # Its access log is replaced by the request line RequestContextMiddleware writes (with the ids).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
