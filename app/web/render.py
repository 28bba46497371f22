"""Templates and the page route class: HTML rendering, sign-in redirects and HTML error pages."""

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from app.api.retry import ReadRetryRoute
from app.errors import APIError
from app.web.session import CSRF_FIELD, CsrfFailed, LoginRequired, WebSession, load_session, save_session
from core.settings import get_settings

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

templates = Jinja2Templates(directory=TEMPLATES_DIR)


def _fmt_time(stamp: int | None) -> str:
    if stamp is None:
        return "—"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


templates.env.filters["time"] = _fmt_time
templates.env.filters["num"] = _fmt_num
templates.env.filters["duration"] = _fmt_duration


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    """A template with the session's CSRF token available; a new session's cookie is set on the response."""
    settings = get_settings()
    web = load_session(request, settings)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf_token": web.csrf,
            "csrf_field": CSRF_FIELD,
            "signed_in": web.token is not None,
            **(context or {}),
        },
        status_code=status_code,
    )
    if web.dirty:
        save_session(request, response, web, settings)
    return response


def redirect(request: Request, url: str) -> Response:
    """A redirect after POST; htmx requests get HX-Redirect so the whole page navigates."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def signed_in(request: Request, response: Response, web: WebSession) -> Response:
    save_session(request, response, web, get_settings())
    return response


class PageRoute(ReadRetryRoute):
    """Dashboard routes answer in HTML: no session → sign-in page, domain errors → an error page; reads
    are run again once after a dropped DB connection, as the API's are."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                if request.method == "GET" and not request.headers.get("hx-request"):
                    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
                return render(request, "error.html", {"title": "Sign in required"}, status_code=401)
            except CsrfFailed:
                context = {
                    "title": "Request refused",
                    "message": "The form was stale; reload the page and retry.",
                }
                return render(request, "error.html", context, status_code=403)
            except APIError as error:
                context = {"title": error.message}
                return render(request, "error.html", context, status_code=error.status_code)

        return page_handler
