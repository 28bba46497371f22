"""Webhooks end to end: a real API (its reaper dispatches the outbox), a real `sppo worker` on the
`webhooks` queue, and a real HTTP receiver on 127.0.0.1 (allowed by the operator setting); the official
SDK's `webhooks.unwrap` verifies what arrives."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from core.db import session_scope, upgrade_database
from core.models import Evaluation, JobStatus, Tenant, WebhookDelivery, WebhookEndpoint
from core.settings import Settings
from core.webhooks import UnsafeWebhookURL, check_url
from tests.app.conftest import ITEM, ROOT, Server, method, migrate, run_api_server
from tests.conftest import RedisServer
from worker import evaluations
from worker.webhooks import deliver

MAX_ATTEMPTS = 3


@dataclass
class Receiver:
    """A threaded HTTP server that records every POST and answers `status`."""

    status: int = 200
    requests: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def wait_for(self, count: int, timeout_s: float = 60) -> list[tuple[bytes, dict[str, str]]]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} deliveries arrived"
            time.sleep(0.1)
        return self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            state.requests.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(state.status)
            self.send_header("location", state.url)  # read only on a redirect status
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{http.server_address[1]}/hook"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        http.shutdown()
        http.server_close()


@pytest.fixture
def server(tmp_path: Path, own_redis: RedisServer) -> Iterator[Server]:
    db_url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate(tmp_path, db_url)
    env = {
        "SPPO_REAPER_INTERVAL_S": "0.3",
        "SPPO_WEBHOOK_ALLOW_HTTP": "true",
        "SPPO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "SPPO_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "SPPO_WEBHOOK_RETRY_BASE_S": "1",
    }
    with run_api_server(tmp_path, db_url=db_url, redis_url=own_redis.url, env=env) as api:
        worker = _start_worker(api, env)
        try:
            yield api
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def _start_worker(api: Server, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = api.data_dir / "worker.log"
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(ROOT),
        "SPPO_DATA_DIR": str(api.data_dir),  # shared with the API: the same webhook-key file
        "SPPO_DATABASE_URL": api.db_url,
        "SPPO_REDIS_URL": api.redis_url,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "sppo"), "worker", "--queues", "webhooks"],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while "ready." not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"worker did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return process


def _cancelled_job(api: httpx.Client) -> str:
    upload = api.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", ITEM.encode() * 8)}
    )
    assert upload.status_code == 200, upload.text
    body = {"model": "sppo-tiny", "training_file": upload.json()["id"], "method": method(batch_size=8)}
    job = api.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text
    cancelled = api.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    return str(job.json()["id"])


def _register(api: httpx.Client, url: str) -> dict[str, Any]:
    created = api.post("/v1/webhooks", json={"url": url})
    assert created.status_code == 200, created.text
    return dict(created.json())


def test_cancelled_job_delivery_is_verified_by_the_sdk(server: Server, receiver: Receiver) -> None:
    with server.client(server.new_key()) as api, server.client(server.new_key()) as other:
        endpoint = _register(api, receiver.url)
        assert endpoint["secret"].startswith("whsec_")
        assert api.get(f"/v1/webhooks/{endpoint['id']}").json()["secret"] is None  # shown once
        assert other.get(f"/v1/webhooks/{endpoint['id']}").status_code == 404  # another tenant's
        assert other.get("/v1/webhooks").json()["data"] == []
        _cancelled_job(other)  # no endpoint of its own: nothing is sent anywhere
        job_id = _cancelled_job(api)

        [(body, headers)] = receiver.wait_for(1)
        event = openai.OpenAI(api_key="unused", webhook_secret=endpoint["secret"]).webhooks.unwrap(
            body, headers
        )
        assert (event.type, event.object, event.data.id) == ("fine_tuning.job.cancelled", "event", job_id)
        assert headers["webhook-id"] == event.id

        wrong = _register(api, receiver.url)["secret"]  # a real secret, of another endpoint
        with pytest.raises(openai.InvalidWebhookSignatureError):
            openai.OpenAI(api_key="unused", webhook_secret=wrong).webhooks.unwrap(body, headers)

        [delivery] = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
        assert (delivery["id"], delivery["status"], delivery["attempts"]) == (event.id, "delivered", 1)
        assert delivery["last_status_code"] == 200
        time.sleep(1)  # the other tenant's cancel had its chance to (wrongly) reach this receiver
        assert len(receiver.requests) == 1


def test_failing_receiver_gets_bounded_retries(server: Server, receiver: Receiver) -> None:
    receiver.status = 500
    with server.client(server.new_key()) as api:
        endpoint = _register(api, receiver.url)
        _cancelled_job(api)
        requests = receiver.wait_for(MAX_ATTEMPTS)
        assert len({headers["webhook-id"] for _, headers in requests}) == 1  # one event, retried
        deadline = time.monotonic() + 10
        while (delivery := api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"][0])[
            "status"
        ] == ("pending"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 3, 500)
        time.sleep(2.5)  # past the next backoff: no further attempt
        assert len(receiver.requests) == MAX_ATTEMPTS


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """Settings of an in-process worker on a migrated SQLite database, allowed to call 127.0.0.1 once."""
    url = f"sqlite:///{tmp_path / 'local.db'}"
    upgrade_database(url)
    return Settings(
        data_dir=tmp_path,
        database_url=url,
        webhook_allow_http=True,
        webhook_allow_private_addresses=True,
        webhook_max_attempts=1,
    )


def _endpoint(settings: Settings, url: str) -> str:
    with session_scope(settings.db_url) as session:
        tenant = Tenant(name="acme")
        session.add(tenant)
        session.flush()
        session.add(WebhookEndpoint(tenant_id=tenant.id, url=url))
        session.add(Evaluation(id="eval-1", tenant_id=tenant.id, model="sppo-tiny", file_id="file-1"))
        session.commit()
        return tenant.id


def _deliveries(settings: Settings) -> list[tuple[str, str, str, int | None]]:
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(WebhookDelivery)).all()
        return [(d.event_type, d.object_id, d.status, d.last_status_code) for d in rows]


def test_finished_evaluation_sends_eval_run_event_and_redirects_are_not_followed(
    local_settings: Settings, receiver: Receiver
) -> None:
    receiver.status = 302  # followed, the POST would become a GET, which this receiver answers 501
    _endpoint(local_settings, receiver.url)
    assert evaluations._update(local_settings, "eval-1", status=JobStatus.running)
    assert _deliveries(local_settings) == []  # not a terminal status
    assert evaluations._update(local_settings, "eval-1", status=JobStatus.failed)
    [(event_type, object_id, _, _)] = _deliveries(local_settings)
    assert (event_type, object_id) == ("eval.run.failed", "eval-1")
    with session_scope(local_settings.db_url) as session:
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    assert deliver(delivery_id, settings=local_settings) == "failed"  # one attempt allowed
    assert _deliveries(local_settings) == [("eval.run.failed", "eval-1", "failed", 302)]
    assert deliver(delivery_id, settings=local_settings) == "nothing to send"
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # plain http
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest",  # cloud metadata
        "https://[::1]/hook",
        "https://user:pw@93.184.216.34/hook",
    ],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookURL):
        check_url(Settings(), url)


def test_public_https_url_is_accepted() -> None:
    check_url(Settings(), "https://93.184.216.34/hook")
    check_url(Settings(webhook_allow_http=True, webhook_allow_private_addresses=True), "http://127.0.0.1:9/x")
