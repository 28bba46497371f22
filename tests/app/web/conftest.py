"""Dashboard test helpers: an httpx client that signs in like a browser (cookie jar + CSRF token)."""

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

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
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", ITEM.encode())}
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
