"""What the judge and embeddings clients share: one retry on 429/503 after a bounded Retry-After, readable
JSON or a ValueError, and error details fit for a tenant's eyes (bounded, never the service's credentials).
"""

import math
from typing import Any

import httpx

RETRY_STATUSES = (429, 503)  # retried once
MAX_RETRY_WAIT_S = 2.0  # the longest Retry-After honoured
DETAIL_CHARS = 500  # how much of an error a result keeps
UNREACHABLE = (httpx.HTTPError, httpx.InvalidURL)  # a request that got no answer (InvalidURL is no HTTPError)


def auth_headers(api_key: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {api_key}"} if api_key else None


def retry_wait(response: httpx.Response, attempt: int) -> float | None:
    """Seconds to wait before the one retry this answer earns (the first 429 or 503), else None."""
    if attempt > 0 or response.status_code not in RETRY_STATUSES:
        return None
    try:
        wait = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), MAX_RETRY_WAIT_S) if math.isfinite(wait) else 1.0  # "nan" is a float too


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON; ValueError when it is none, or nests too deeply to read."""
    try:
        return response.json()
    except RecursionError:
        raise ValueError("the answer's JSON nests too deeply") from None


def error_detail(response: httpx.Response, *, endpoint: str, api_key: str | None) -> str:
    """`HTTP <status>: <the endpoint's message>`, at most DETAIL_CHARS. When the endpoint refuses the
    service's own key (401, 403) it says only that: OpenAI's message quotes part of the key, and tenants read
    this."""
    status = response.status_code
    if api_key and status in (401, 403):
        return f"the {endpoint} endpoint refused the service's credentials (HTTP {status})"
    try:
        message = str(json_body(response)["error"]["message"])
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        message = response.text
    if api_key:  # whole, before any cut
        message = message.replace(api_key, "***")
    return f"HTTP {status}: {message}"[:DETAIL_CHARS]


def unreachable_detail(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
