"""`sppo serve` as a container runs it: JSON log lines carrying the ids, and a graceful SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.services.keys import create_key
from core.db import session_scope, upgrade_database
from tests.conftest import free_port

from .conftest import method

GRACE_S = 3
HEADER_TIMEOUT_S = 1
# uvicorn re-raises the SIGTERM it handled once it has shut down, so the exit status says "terminated".
CLEAN_EXIT = (0, -signal.SIGTERM)


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path
    db_url: str

    def lines(self) -> list[dict[str, Any]]:
        """Every line the server wrote, each parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[Served]:
    yield from _serve(tmp_path, redis_url)


@pytest.fixture
def served_by_two(tmp_path: Path, redis_url: str) -> Iterator[Served]:
    yield from _serve(tmp_path, redis_url, SPPO_API_WORKERS="2")


def _serve(tmp_path: Path, redis_url: str, **settings: str) -> Iterator[Served]:
    db_url = f"sqlite:///{tmp_path / 'sppo.db'}"
    upgrade_database(db_url)
    port = free_port()
    env = {
        **os.environ,
        "SPPO_DATA_DIR": str(tmp_path),
        "SPPO_DATABASE_URL": db_url,
        "SPPO_REDIS_URL": redis_url,
        "SPPO_LOG_FORMAT": "json",
        "SPPO_SHUTDOWN_DRAIN_S": str(GRACE_S),
        "SPPO_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "SPPO_PORT": str(port),
        **settings,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "sppo"), "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    try:
        yield Served(process=process, base_url=base_url, log=log, db_url=db_url)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_every_line_is_json_and_a_request_line_carries_request_and_tenant_ids(served: Served) -> None:
    with session_scope(served.db_url) as session:
        created = create_key(session, tenant_name="logs")
        tenant_id = created.api_key.tenant_id
    headers = {"Authorization": f"Bearer {created.plaintext}", "X-Request-ID": "log-test-1"}
    assert httpx.get(f"{served.base_url}/v1/models", headers=headers, timeout=10).status_code == 200
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) in CLEAN_EXIT
    lines = served.lines()
    (request,) = [line for line in lines if line.get("request_id") == "log-test-1"]
    assert request["event"] == "request" and request["route"] == "/v1/models" and request["status"] == 200
    assert request["tenant_id"] == tenant_id and request["level"] == "info" and "timestamp" in request
    assert any("Started server process" in line["event"] for line in lines)  # uvicorn's own lines too


def test_a_request_head_that_never_completes_gets_408_after_the_header_timeout(served: Served) -> None:
    address = urlsplit(served.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answer = sock.recv(4096)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert HEADER_TIMEOUT_S - 0.2 <= waited < HEADER_TIMEOUT_S + 3, waited


def test_sigterm_lets_an_upload_in_flight_finish_and_closes_open_streams(served: Served) -> None:
    with session_scope(served.db_url) as session:
        key = create_key(session, tenant_name="drain").plaintext
    api = httpx.Client(base_url=served.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    item = b'{"messages": [{"role": "user", "content": "1+1?"}], "answer": "2"}\n'
    training_file = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", item)})
    body = {"model": "sppo-tiny", "training_file": training_file.json()["id"], "method": method()}
    job = api.post("/v1/fine_tuning/jobs", json=body).json()  # queued: no worker here, its stream stays open
    started = threading.Event()
    result: dict[str, Any] = {}

    def slow_body() -> Iterator[bytes]:
        boundary = b"--b\r\n"
        yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        started.set()
        for _ in range(4):  # still sending for a second and a half after SIGTERM
            time.sleep(0.5)
            yield item
        yield b"\r\n--b--\r\n"

    def upload() -> None:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        result["upload"] = api.post("/v1/files", content=slow_body(), headers=headers)

    def stream() -> None:
        try:
            with api.stream("GET", f"/v1/fine_tuning/jobs/{job['id']}/metrics/stream") as response:
                result["stream_status"] = response.status_code
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError as exc:  # cut at the end of the grace period: the client reconnects later
            result["stream_error"] = type(exc).__name__
        result["stream_closed"] = time.monotonic()

    threads = [threading.Thread(target=upload), threading.Thread(target=stream)]
    for thread in threads:
        thread.start()
    assert started.wait(10)
    time.sleep(0.3)
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=GRACE_S + 20)
    assert result["upload"].status_code == 200, result["upload"].text  # drained, not cut off
    assert result["upload"].json()["filename"] == "t.jsonl"
    assert result["stream_status"] == 200
    assert result["stream_closed"] - signalled < GRACE_S + 5  # closed by the server, not left hanging
    assert served.process.wait(timeout=20) in CLEAN_EXIT
    with pytest.raises(httpx.TransportError):  # nothing listens any more
        httpx.get(f"{served.base_url}/health", timeout=2)


def test_two_worker_processes_report_the_http_series_of_both(served_by_two: Served) -> None:
    with session_scope(served_by_two.db_url) as session:
        key = create_key(session, tenant_name="two").plaintext
    requests = 40
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(requests):  # a new connection each: the kernel spreads them over both processes
        assert httpx.get(f"{served_by_two.base_url}/v1/models", headers=headers).status_code == 200
    # a request is counted just after its response is sent: allow the last one a moment
    deadline = time.monotonic() + 5
    while _scrape(served_by_two)[("sppo_http_requests_total", "/v1/models", "200")] < requests:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(6):  # whichever process answers the scrape, it counts every request
        samples = _scrape(served_by_two)
        assert samples[("sppo_http_requests_total", "/v1/models", "200")] == requests
        assert samples[("sppo_http_request_duration_seconds_count", "/v1/models", None)] == requests
    served_by_two.process.send_signal(signal.SIGTERM)
    assert served_by_two.process.wait(timeout=30) in CLEAN_EXIT
    started = [line for line in served_by_two.lines() if "Started server process" in line["event"]]
    assert len(started) == 2


def _scrape(served: Served) -> dict[tuple[str, str | None, str | None], float]:
    scrape = httpx.get(f"{served.base_url}/metrics", timeout=10)
    return {
        (sample.name, sample.labels.get("route"), sample.labels.get("status")): sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
    }
