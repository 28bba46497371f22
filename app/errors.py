"""Domain errors and their one mapping to OpenAI error bodies {"error": {message, type, param, code}}."""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobspec.hyperparameters import HINTS, HYPERPARAMETERS
from jobspec.walk import is_type_tag

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client can act on. Services raise these; one handler renders them."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After (429, 503)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(APIError):
    pass


class AuthenticationError(APIError):
    status_code = 401
    code = "invalid_api_key"


class NotFound(APIError):
    status_code = 404
    code = "not_found"


class Conflict(APIError):
    status_code = 409
    code = "invalid_state"


class PayloadTooLarge(APIError):
    status_code = 413
    code = "file_too_large"


class QuotaExceeded(APIError):
    status_code = 429
    type = "rate_limit_error"
    code = "concurrent_jobs_limit"


class ServiceUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class PermissionDenied(APIError):
    status_code = 403
    code = "permission_denied"


DB_UNAVAILABLE = ServiceUnavailable(
    "The database is busy or unreachable; retry shortly.", code="database_unavailable"
)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def loc_to_param(loc: Sequence[int | str]) -> str | None:
    """A pydantic error location as a dotted param: ("body", "method", "type") → "method.type"."""
    parts: list[str] = []
    for item in loc:
        text = str(item)
        if not parts and text in {"body", "query", "path", "header"}:
            continue
        if "[" in text or text in {"int", "float", "str", "bool", "constrained-int", "constrained-float"}:
            break  # a union member's label: the param is the field before it
        if is_type_tag(parts, text):
            continue
        parts.append(text if isinstance(item, str) else f"[{item}]")
    return ".".join(parts).replace(".[", "[") or None


def validation_error(errors: Sequence[Any]) -> APIError:
    """The first failing param, with every message pydantic gave for it (union members give several)."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    param = loc_to_param(first["loc"])
    messages = [e["msg"] for e in errors if loc_to_param(e["loc"]) == param]
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        param = f"{param}.type"  # the grader's `type` chose no known grader
    message = "; ".join(dict.fromkeys(messages))
    if first.get("type") == "extra_forbidden":
        hint = HINTS.get(param.rsplit(".", 1)[-1]) if param and param.startswith(HYPERPARAMETERS) else None
        message = f"Unknown parameter: '{param}'." + (f" {hint}" if hint else "")
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {message}."
    return InvalidRequest(message, param=param, code="invalid_value")


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "unknown"))


def _render(error: APIError, request: Request) -> JSONResponse:
    headers = {"X-Request-ID": _request_id(request)}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(
        error_body(error.message, error.type, error.param, error.code),
        status_code=error.status_code,
        headers=headers,
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return _render(exc, request)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # exc.errors() carries the input values; only locations and messages go to the client.
    return _render(validation_error(exc.errors()), request)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error = APIError(str(exc.detail))
    error.status_code = exc.status_code
    error.code = {
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "body_too_large",
    }.get(exc.status_code)
    return _render(error, request)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # An exhausted pool (bounded wait, see core/db.py) or a dropped connection: a retry will do.
    if (
        isinstance(exc, DBAPIError)
        and not isinstance(exc, OperationalError)
        and not exc.connection_invalidated
    ):
        return await _unexpected_error(request, exc)
    log.warning("database unavailable in %s %s: %s", request.method, request.url.path, type(exc).__name__)
    response = _render(DB_UNAVAILABLE, request)
    response.headers["Retry-After"] = "1"
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = _request_id(request)
    log.exception("unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id)
    body = error_body(
        f"The server had an error while processing your request (request id {request_id}).", "server_error"
    )
    return JSONResponse(body, status_code=500, headers={"X-Request-ID": request_id})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SATimeoutError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
