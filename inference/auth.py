"""Who may ask the model server for anything: the holders of SPPO_INFERENCE_SECRET (the API and the workers'
graders), which they send as `Authorization: Bearer <secret>`. The server loads whichever adapter a request
names, so without the secret any process that reaches its port could generate with any tenant's adapter
(artifact keys follow from job ids). Only `GET /health` is open: it carries no tenant data.

The header is checked before a body is read, in constant time; the secret is never logged or echoed.
"""

import hmac
import ipaddress

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.settings import Settings
from inference.prepare import RequestError

OPEN_PATHS = frozenset({"/health"})


class InsecureStart(RuntimeError):
    """The model server would answer anyone: no secret, and no dev setting (on loopback) that allows it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_secret(settings: Settings) -> str | None:
    """The secret callers must show; None only where SPPO_INFERENCE_ALLOW_NO_SECRET lets a loopback-bound
    server go without one. InsecureStart otherwise."""
    if settings.inference_secret is not None:
        return settings.inference_secret.get_secret_value()
    if not settings.inference_allow_no_secret:
        raise InsecureStart(
            "SPPO_INFERENCE_SECRET is not set: the model server would let any process that reaches its port "
            "generate with any tenant's adapter. Set the same secret (32+ characters, e.g. `openssl rand "
            "-hex 32`) for the model server, the API and the workers; `sppo run` draws one itself. For local "
            "development only, SPPO_INFERENCE_ALLOW_NO_SECRET=true starts it without one on loopback."
        )
    if not is_loopback(settings.inference_host):
        raise InsecureStart(
            f"SPPO_INFERENCE_ALLOW_NO_SECRET is for loopback only, and SPPO_INFERENCE_HOST is "
            f"{settings.inference_host}: set SPPO_INFERENCE_SECRET."
        )
    return None


class SecretRequired:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <secret>`, else 401."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.expected = f"Bearer {secret}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = RequestError(401, "The model server answers only the API: a missing or wrong "
                             "SPPO_INFERENCE_SECRET.", code="invalid_model_server_secret")  # fmt: skip
        response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        sent = [value for name, value in scope["headers"] if name == b"authorization"]
        return len(sent) == 1 and hmac.compare_digest(sent[0], self.expected)
