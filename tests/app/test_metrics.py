"""`/metrics` through prometheus_client's parser: HTTP histograms, jobs, queue depth, worker presence and the
training rates of a running job, written by the real worker code into the live server's DB and Redis."""

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import training_rates
from core.db import get_sessionmaker, session_scope
from core.storage import ArtifactStore
from worker.jobs import claim_job, fail_job
from worker.presence import Presence
from worker.reporting import JobReporter

from .conftest import Server, method

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_training_rates_between_the_two_newest_steps_and_since_the_start() -> None:
    first = {"step": 4, "metrics": {"perf/elapsed_s": 10.0, "perf/samples": 32.0, "perf/tokens": 1000.0}}
    second = {"step": 5, "metrics": {"perf/elapsed_s": 12.5, "perf/samples": 40.0, "perf/tokens": 1250.0}}
    assert training_rates(second, first) == {"steps": 0.4, "samples": 3.2, "tokens": 100.0}
    assert training_rates(first, None) == {"steps": 0.4, "samples": 3.2, "tokens": 100.0}
    assert training_rates(first, first) == {}  # no time between them: no rate rather than a division by 0


def test_http_series_count_requests_by_route_and_status_in_a_histogram(
    server: Server, api: httpx.Client
) -> None:
    route = {"method": "GET", "route": "/v1/fine_tuning/jobs/{job_id}"}
    before = scrape(server)
    for _ in range(3):
        assert api.get("/v1/fine_tuning/jobs/ftjob-missing").status_code == 404
    after = scrape(server)
    delta = {
        name: value(after, name, **labels) - value(before, name, **labels)
        for name, labels in [
            ("sppo_http_requests_total", {**route, "status": "404"}),
            ("sppo_http_request_duration_seconds_count", route),
            ("sppo_http_request_duration_seconds_bucket", {**route, "le": "+Inf"}),
        ]
    }
    assert delta == {
        "sppo_http_requests_total": 3,
        "sppo_http_request_duration_seconds_count": 3,
        "sppo_http_request_duration_seconds_bucket": 3,
    }
    assert value(after, "sppo_http_request_duration_seconds_sum", **route) > 0
    assert all("ftjob-missing" not in str(labels) for _, labels in after)  # route templates, not ids


def test_job_queue_worker_and_training_series_after_a_job_runs(
    server: Server, api: httpx.Client, upload: Callable[..., dict[str, Any]]
) -> None:
    before = scrape(server)
    body = {"model": "sppo-tiny", "training_file": upload()["id"], "method": method(batch_size=8)}
    created = api.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    queued = scrape(server)
    assert (
        value(queued, "sppo_queue_depth", queue="training")
        == value(before, "sppo_queue_depth", queue="training") + 1
    )
    assert value(queued, "sppo_jobs", status="queued") == value(before, "sppo_jobs", status="queued") + 1

    worker_id = "metrics-test:1"
    client = redis.Redis.from_url(server.redis_url)
    presence = Presence(client, worker_id=worker_id, device="cpu", interval_s=60)
    presence.task = ("sppo.train", job_id)
    presence.record()
    with session_scope(server.db_url) as session:
        assert claim_job(session, job_id=job_id, worker_id=worker_id) is not None
    reporter = JobReporter(
        job_id=job_id, worker_id=worker_id, model_name="ft:test", store=ArtifactStore(None, server.data_dir),
        sessions=get_sessionmaker(server.db_url), redis_client=client, heartbeat_interval_s=60, db_retry_s=5,
    )  # fmt: skip
    try:
        for step, elapsed, samples, tokens in [(1, 2.0, 8, 300), (2, 6.0, 16, 700)]:
            metrics = {"perf/elapsed_s": elapsed, "perf/samples": samples, "perf/tokens": tokens}
            reporter.on_step(step, {**metrics, "perf/peak_memory_mb": 1.5})
        running = scrape(server)
        assert (
            value(running, "sppo_jobs", status="running") == value(before, "sppo_jobs", status="running") + 1
        )
        assert value(running, "sppo_job_current_step", job_id=job_id) == 2
        assert value(running, "sppo_job_steps_per_second", job_id=job_id) == 0.25  # (2 - 1) / (6 - 2)
        assert value(running, "sppo_job_samples_per_second", job_id=job_id) == 2.0  # (16 - 8) / 4
        assert value(running, "sppo_job_tokens_per_second", job_id=job_id) == 100.0  # (700 - 300) / 4
        assert value(running, "sppo_job_peak_memory_bytes", job_id=job_id) == 1.5 * 2**20
        assert value(running, "sppo_worker_busy", worker=worker_id) == 1
        seen = value(running, "sppo_worker_last_seen_timestamp_seconds", worker=worker_id)
        assert seen == pytest.approx(time.time(), abs=30)
        reporter.flush()
        with session_scope(server.db_url) as session:
            fail_job(session, job_id=job_id, worker_id=worker_id, code="test", message="done", param=None)
    finally:
        reporter.close()
        presence.stop()
    finished = scrape(server)
    assert value(finished, "sppo_jobs", status="failed") == value(before, "sppo_jobs", status="failed") + 1
    assert not [
        labels for name, labels in finished if name.startswith("sppo_job_") and ("job_id", job_id) in labels
    ]
    assert not [labels for name, labels in finished if ("worker", worker_id) in labels]  # it said goodbye
