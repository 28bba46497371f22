"""Security headers on every response, and the one rule for when a connection counts as https.

The Content-Security-Policy fits the dashboard as built: scripts and styles only from /static (the vendored
htmx and uPlot, charts.js), data in JSON script tags, no inline script or handler. Inline style attributes
stay allowed (the templates use them for layout; CSS cannot run code). The interactive API docs load
Swagger UI from a CDN with an inline script, so they get every header but the CSP.
"""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HSTS = "max-age=31536000"
_DOCS = ("/docs", "/redoc")


def is_secure(scope: Scope, settings: Settings) -> bool:
    """Whether cookies get `Secure` and responses HSTS: the setting when given, else the request's scheme.

    The scheme is https only when TLS reached this process or a trusted proxy said so (uvicorn applies
    X-Forwarded-Proto only from the addresses it is told to trust: SPPO_FORWARDED_ALLOW_IPS).
    """
    if settings.session_cookie_secure is not None:
        return settings.session_cookie_secure
    return scope.get("scheme") == "https"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = is_secure(scope, self.settings)
        docs = scope["path"].startswith(_DOCS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "same-origin")
                if not docs:
                    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                if secure:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
