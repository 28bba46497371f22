"""Dashboard test helpers: an httpx client that signs in like a browser (cookie jar + CSRF token)."""

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.db import session_scope
from core.models import MetricPoint

from ..conftest import ITEM, Server, method

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


class Browser:
    """Cookies and the CSRF token, as a browser holds them; `post` sends the token as a form field."""

    def __init__(self, server: Server) -> None:
        self.http = httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False)
        self.csrf = ""

    def sign_in(self, key: str) -> httpx.Response:
        self.csrf = csrf_of(self.http.get("/login").text)
        response = self.http.post("/login", data={"api_key": key, "csrf_token": self.csrf, "next": "/"})
        if response.status_code == 303:  # sign-in rotates the CSRF token: read the new one, as a page would
            self.csrf = csrf_of(self.http.get("/").text)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


@pytest.fixture
def browser(server: Server, key: str) -> Iterator[Browser]:
    """A browser session signed in as the test's tenant (the `key` fixture)."""
    session = Browser(server)
    assert session.sign_in(key).status_code == 303
    yield session
    session.http.close()


@pytest.fixture
def new_job(api: httpx.Client) -> Callable[..., dict[str, Any]]:
    """A job created through the JSON API (it stays queued: no worker runs in these tests)."""

    def _create(algorithm: str = "sppo") -> dict[str, Any]:
        file = api.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", (ITEM * 4).encode())}
        )
        body = method(batch_size=2)
        body["reinforcement"]["algorithm"] = algorithm
        job = api.post(
            "/v1/fine_tuning/jobs",
            json={"model": "sppo-tiny", "training_file": file.json()["id"], "method": body},
        )
        assert job.status_code == 200, job.text
        return dict(job.json())

    return _create


def add_points(server: Server, job_id: str, steps: range) -> None:
    """Step metrics as the worker persists them."""
    with session_scope(server.db_url) as session:
        for step in steps:
            metrics = {
                "rollout/reward_mean": step / 10,
                "perf/elapsed_s": 2.0 * step,
                "perf/samples": 64.0 * step,
            }
            session.add(MetricPoint(job_id=job_id, step=step, metrics=metrics))


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (its own browser download is never used).

    One browser per test session even where another directory re-exports this fixture (tests/e2e):
    Playwright's sync API allows one instance per thread.
    """
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    owner = "browser" not in _shared
    if owner:
        from playwright.sync_api import sync_playwright

        _shared["playwright"] = sync_playwright().start()
        _shared["browser"] = _shared["playwright"].chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
    yield _shared["browser"]
    if owner:
        _shared.pop("browser").close()
        _shared.pop("playwright").stop()


def signed_in_page(chromium: Any, base_url: str, key: str, **context: Any) -> Any:
    """A new browser page, signed in through the form like a person would."""
    options = {"viewport": {"width": 1280, "height": 860}, **context}
    page = chromium.new_context(base_url=base_url, **options).new_page()
    page.goto("/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
    return page
