"""Dashboard sessions end server-side, CSRF tokens rotate at sign-in, cookies and headers fit a TLS proxy.

Each test signs in through the real form of a live `uvicorn app.main:app` and replays cookies the way an
attacker holding an old copy would; the last one loads the pages in Chromium under the CSP.
"""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.services.keys import revoke_key
from app.web.headers import CONTENT_SECURITY_POLICY
from app.web.session import COOKIE
from core.db import session_scope
from core.models import ApiKey, DashboardSession
from core.security import hash_api_key

from ..app.conftest import ITEM, Server, method, migrate, run_api_server
from ..app.web.conftest import Browser, chromium, csrf_of, signed_in_page

__all__ = ["chromium"]  # the shared headless-Chromium fixture, used by the browser test below


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("sppo-sessions")
    db_url = f"sqlite:///{data_dir / 'api.db'}"
    migrate(data_dir, db_url)
    with run_api_server(data_dir, db_url=db_url, redis_url=redis_url, env={}) as running:
        yield running


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    """Behind a TLS-terminating proxy that sends no forwarded headers: Secure is forced by the setting."""
    data_dir = tmp_path_factory.mktemp("sppo-tls")
    db_url = f"sqlite:///{data_dir / 'api.db'}"
    migrate(data_dir, db_url)
    env = {"SPPO_SESSION_COOKIE_SECURE": "true"}
    with run_api_server(data_dir, db_url=db_url, redis_url=redis_url, env=env) as running:
        yield running


def _signed_in(site: Server) -> tuple[Browser, str]:
    browser = Browser(site)
    key = site.new_key()
    assert browser.sign_in(key).status_code == 303
    return browser, key


def _replay(site: Server, cookie: str) -> httpx.Client:
    """A client that holds nothing but a copy of a cookie."""
    client = httpx.Client(base_url=site.base_url, timeout=30, follow_redirects=False)
    client.cookies.set(COOKIE, cookie)
    return client


def _queued_job(site: Server, key: str) -> str:
    with site.client(key) as api:
        upload = {"file": ("t.jsonl", ITEM.encode())}
        file = api.post("/v1/files", data={"purpose": "fine-tune"}, files=upload)
        body = {"model": "sppo-tiny", "training_file": file.json()["id"], "method": method(batch_size=1)}
        return str(api.post("/v1/fine_tuning/jobs", json=body).json()["id"])


def _sessions(site: Server) -> int:
    with session_scope(site.db_url) as session:
        return int(session.scalar(select(func.count()).select_from(DashboardSession)) or 0)


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(site: Server) -> None:
    browser, _ = _signed_in(site)
    stolen = browser.http.cookies[COOKIE]
    stolen_csrf = browser.csrf
    with _replay(site, stolen) as attacker:
        assert attacker.get("/").status_code == 200  # a live session's cookie works anywhere...
        before = _sessions(site)
        assert browser.post("/logout").status_code == 303
        assert _sessions(site) == before - 1
        # ...and after sign-out no copy of it does: pages, fragments, streams and POSTs are all refused
        assert attacker.get("/").headers["location"].startswith("/login")
        assert attacker.get("/", headers={"HX-Request": "true"}).status_code == 401
        assert attacker.get("/ui/jobs/ftjob-x/stream").headers["location"].startswith("/login")
        refused = attacker.post("/jobs/ftjob-x/cancel", data={"csrf_token": stolen_csrf})
        assert refused.status_code == 401
    assert browser.get("/").status_code == 303  # the browser itself is signed out too


def test_revoking_the_key_ends_its_sessions(site: Server) -> None:
    browser, key = _signed_in(site)
    assert browser.get("/").status_code == 200
    with session_scope(site.db_url) as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key)))
        assert key_id is not None
        revoke_key(session, key_id=key_id)
    assert browser.get("/").headers["location"].startswith("/login")


def test_sign_in_rotates_the_csrf_token_and_the_session(site: Server) -> None:
    browser = Browser(site)
    planted = csrf_of(browser.get("/login").text)
    anonymous = browser.http.cookies[COOKIE]
    key = site.new_key()
    assert browser.sign_in(key).status_code == 303
    assert browser.csrf != planted and browser.http.cookies[COOKIE] != anonymous
    # a token learnt before sign-in (e.g. planted by an attacker) is refused afterwards
    stale = browser.http.post("/logout", data={"csrf_token": planted})
    assert stale.status_code == 403
    # signing in again replaces the browser's session: the first cookie stops working
    first = browser.http.cookies[COOKIE]
    assert browser.sign_in(key).status_code == 303
    with _replay(site, first) as old:
        assert old.get("/").status_code == 303
    assert browser.get("/").status_code == 200


def test_the_session_row_holds_no_usable_token(site: Server) -> None:
    browser, _ = _signed_in(site)
    with session_scope(site.db_url) as session:
        stored = set(session.scalars(select(DashboardSession.id)))
    cookie = browser.http.cookies[COOKIE]
    assert all(len(row) == 64 and row not in cookie for row in stored)


def test_cookie_and_headers_over_plain_http(site: Server) -> None:
    response = httpx.get(f"{site.base_url}/login")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert "strict-transport-security" not in response.headers
    api = httpx.get(f"{site.base_url}/v1/models")  # the JSON API gets them too (a 401 here)
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["x-frame-options"] == "DENY"
    docs = httpx.get(f"{site.base_url}/docs")  # Swagger UI needs its CDN script: no CSP, the rest stays
    assert "content-security-policy" not in docs.headers and docs.headers["x-frame-options"] == "DENY"


def test_secure_cookie_and_hsts_behind_a_tls_proxy(tls_site: Server) -> None:
    browser = Browser(tls_site)
    login = browser.get("/login")
    assert "secure" in login.headers["set-cookie"].lower()
    assert login.headers["strict-transport-security"] == "max-age=31536000"
    key = tls_site.new_key()
    browser.csrf = csrf_of(login.text)
    # httpx keeps Secure cookies off plain http, as a browser would: send it by hand, as the proxy would
    browser.http.cookies.set(COOKIE, login.cookies[COOKIE])
    signed = browser.http.post("/login", data={"api_key": key, "csrf_token": browser.csrf, "next": "/"})
    assert signed.status_code == 303 and "secure" in signed.headers["set-cookie"].lower()


def test_pages_run_under_the_csp_without_violations(site: Server, chromium: Any) -> None:
    key = site.new_key()
    page = signed_in_page(chromium, site.base_url, key)
    # Chromium reports every blocked script, style, frame or connection on the console
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    try:
        for path in ("/", "/compare", "/jobs/new", f"/jobs/{_queued_job(site, key)}"):
            page.goto(path)
            page.wait_for_load_state("networkidle")
        assert page.evaluate("typeof htmx") == "object"  # vendored htmx and uPlot ran from /static
        assert page.evaluate("typeof uPlot") == "function"
    finally:
        page.context.close()  # closes the job page's live stream before the server stops
    assert [text for text in violations if "Content Security Policy" in text] == []
