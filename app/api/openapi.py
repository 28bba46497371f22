"""The OpenAPI schema documents the errors each operation really returns, in OpenAI's error shape.

Routes declare their own errors with `errors(...)`; the `/v1` router adds the ones every authenticated
operation can answer (401, 429, 503). FastAPI's automatic 422 is removed: validation errors are 400s
(app/errors.py), so a client generated from the schema, or a fuzzer, sees exactly what the API sends.
"""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}

_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "Invalid request: a malformed body or parameter (`param` names it)."},
    401: {"description": "Missing, unknown or revoked API key."},
    403: {"description": "The operation is not allowed on this object (e.g. deleting a base model)."},
    404: {"description": "No such object for this API key's tenant."},
    409: {"description": "The object's state does not allow this (e.g. cancelling a finished job)."},
    413: {"description": "The body is larger than the limit."},
    429: {
        "description": "A rate limit or quota of this API key was reached; `Retry-After` says when to retry.",
        "headers": _RETRY_AFTER,
    },
    503: {
        "description": "A backing service (database, Redis) is unavailable or saturated; retry shortly.",
        "headers": _RETRY_AFTER,
    },
}

# Bodies that are not JSON, for the 200 of the download and streaming operations.
EVENT_STREAM = {
    "description": "Server-Sent Events: `metrics` events (one per step, id = stream id, or `step-<N>` "
    "while Redis is away and steps come from the database) after `Last-Event-ID` or `from`, else from "
    "the stream's newest records; then `end`.",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"enum": ["metrics", "end"]},
                    "data": {"type": "string", "description": "JSON: a step's record, or the final status."},
                    "id": {"type": "string", "description": "The stream id; send it back as Last-Event-ID."},
                },
            }
        }
    },
}
JSONL = {
    "description": "The file, one JSON object a line.",
    "content": {"application/jsonl": {"schema": {"type": "string"}}},
}
ARCHIVE = {
    "description": "A .tar.gz of the peft adapter folder.",
    "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
}

# Every operation under /v1: the key is checked, the key's limits apply, and the database may be busy.
AUTHENTICATED = (401, 429, 503)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with its description and the OpenAI error schema."""
    return {code: {"model": ErrorResponse, **_ERRORS[code]} for code in codes}


def install_openapi(app: FastAPI) -> None:
    """Drops FastAPI's 422 (never sent) from every operation and its schemas from the components, and
    documents the Bearer key that every `/v1` operation requires."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for route, path in schema.get("paths", {}).items():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
                    if route.startswith("/v1/"):
                        operation["security"] = [{"ApiKey": []}]
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            components["securitySchemes"] = {
                "ApiKey": {"type": "http", "scheme": "bearer", "description": "An API key: `sk-sppo-...`."}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
