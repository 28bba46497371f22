"""Dashboard sessions and CSRF: a signed, HttpOnly, SameSite cookie holding a session token and a CSRF token.

The API key itself is only ever in the sign-in POST body. Sign-in creates a server-side session
(app/services/sessions.py) and puts its random token in the cookie (signed with SPPO_SESSION_SECRET),
with a CSRF token drawn anew at that moment, so a token planted before sign-in is worth nothing after.
Every POST must echo the CSRF token, as a form field or the X-CSRF-Token header htmx sends, compared in
constant time. Sign-out deletes the session row: a copy of the cookie kept from before is refused.
"""

import hmac
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData

from app.api.deps import SessionDep, SettingsDep
from app.services.sessions import SESSION_TTL_S, session_tenant
from app.web.headers import is_secure
from core.logs import bind_log_ids
from core.models import Tenant
from core.security import operator_secret
from core.settings import Settings

COOKIE = "sppo_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SECRET_FILE = "session-secret"


class LoginRequired(Exception):
    """No valid session: pages redirect to the sign-in page, state-changing requests are refused."""


class CsrfFailed(Exception):
    """A POST without the session's CSRF token."""


@dataclass
class WebSession:
    csrf: str
    token: str | None = None  # the server-side session's token; None before sign-in
    dirty: bool = field(default=False, compare=False)  # must be (re)sent to the browser


@lru_cache
def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="sppo.dashboard.session")


def serializer(settings: Settings) -> URLSafeTimedSerializer:
    return _serializer(operator_secret(settings.session_secret, settings.data_dir / SECRET_FILE))


def load_session(request: Request, settings: SettingsDep) -> WebSession:
    """The request's session, or a fresh anonymous one (with a new CSRF token) to be set on the response."""
    cached = request.scope.get("sppo.web_session")
    if isinstance(cached, WebSession):
        return cached
    data: Any = None
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = serializer(settings).loads(raw, max_age=SESSION_TTL_S)
        except BadSignature:  # includes expired
            data = None
    if isinstance(data, dict) and isinstance(data.get("csrf"), str):
        token = data.get("sid")
        web = WebSession(csrf=data["csrf"], token=token if isinstance(token, str) else None)
    else:
        web = WebSession(csrf=secrets.token_urlsafe(32), dirty=True)
    request.scope["sppo.web_session"] = web
    return web


WebSessionDep = Annotated[WebSession, Depends(load_session)]


def start_session(web: WebSession, token: str) -> None:
    """Signed in: the new session's token, and a fresh CSRF token (never the one used before sign-in)."""
    web.token = token
    web.csrf = secrets.token_urlsafe(32)
    web.dirty = True


def end_session(web: WebSession) -> None:
    """Signed out: an anonymous session with a fresh CSRF token."""
    web.token = None
    web.csrf = secrets.token_urlsafe(32)
    web.dirty = True


def save_session(request: Request, response: Response, web: WebSession, settings: Settings) -> None:
    value = serializer(settings).dumps({"csrf": web.csrf, "sid": web.token})
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="lax",  # sent on top-level navigation from a link, never on cross-site POSTs
        secure=is_secure(request.scope, settings),
        path="/",
    )


def get_web_tenant(web: WebSessionDep, session: SessionDep) -> Tenant:
    if web.token is None:
        raise LoginRequired
    tenant = session_tenant(session, token=web.token)
    if tenant is None:  # signed out, expired, or the key was revoked since sign-in
        raise LoginRequired
    bind_log_ids(tenant_id=tenant.id)
    return tenant


WebTenant = Annotated[Tenant, Depends(get_web_tenant)]


async def check_csrf(request: Request, web: WebSessionDep) -> None:
    """Dependency of every POST: the token from the header or form must equal the session's."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()  # parsed once; the route's Form()/File() params reuse it
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if web.dirty or not sent or not hmac.compare_digest(sent.encode(), web.csrf.encode()):
        raise CsrfFailed


CsrfChecked = Depends(check_csrf)


async def form_data(request: Request) -> FormData:
    return await request.form()  # Starlette caches it: the CSRF check and the route read the same parse


PostedForm = Annotated[FormData, Depends(form_data)]


def form_text(form: FormData, name: str) -> str:
    """A text field of a posted form, stripped ("" when absent or a file)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""
