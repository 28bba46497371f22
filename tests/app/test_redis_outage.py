"""A Redis outage on the API's live paths: a metrics stream keeps its connection and goes on from the DB;
pause and cancel are answered, and the pause reaches the worker through the DB.

A real uvicorn API on a redis-server of the test's own, which the test kills and starts again empty; the
worker's side is played by its own code (worker.livestream.publish_step) and rows in the database.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select, update

from core.db import get_sessionmaker, session_scope, upgrade_database
from core.models import ApiKey, Job, JobStatus, MetricPoint
from core.settings import Settings
from core.storage import ArtifactStore
from core.streams import encode_step
from tests.app.conftest import Server, method, run_api_server
from tests.conftest import RedisServer
from worker.livestream import publish_step
from worker.reporting import JobReporter

WAIT_S = 30


@pytest.fixture
def outage_server(tmp_path: Path, own_redis: RedisServer) -> Iterator[Server]:
    db_url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade_database(db_url)
    with run_api_server(tmp_path, db_url=db_url, redis_url=own_redis.url, env={}) as server:
        yield server


def running_job(server: Server, worker_id: str | None = None) -> str:
    with session_scope(server.db_url) as session:
        tenant_id = session.scalars(select(ApiKey.tenant_id)).first()
        job = Job(tenant_id=tenant_id, model="sppo-tiny", training_file="file-x", seed=0, method=method())
        job.status, job.worker_id = JobStatus.running, worker_id
        session.add(job)
        session.flush()
        return job.id


class Worker:
    """What a training worker writes per step: the DB's metric point, then the live record in Redis."""

    def __init__(self, server: Server, job_id: str) -> None:
        self.server, self.job_id = server, job_id

    def step(self, step: int, *, live: bool = True) -> None:
        metrics = {"rollout/reward_mean": step / 10}
        with session_scope(self.server.db_url) as session:
            session.add(MetricPoint(job_id=self.job_id, step=step, metrics=metrics))
        if live:
            client = redis.Redis.from_url(self.server.redis_url)
            publish_step(client, self.job_id, step, metrics, self._earlier)

    def _earlier(self, step: int) -> list[dict[str, str]]:
        with session_scope(self.server.db_url) as session:
            points = session.scalars(
                select(MetricPoint).where(MetricPoint.job_id == self.job_id, MetricPoint.step < step)
            ).all()
            return [
                encode_step(p.step, p.metrics, p.created_at) for p in sorted(points, key=lambda p: p.step)
            ]

    def finish(self) -> None:
        with session_scope(self.server.db_url) as session:
            session.execute(update(Job).where(Job.id == self.job_id).values(status=JobStatus.succeeded))


class StreamReader:
    """One SSE connection read in a thread: (event, id, data) of every event, until `end`."""

    def __init__(self, client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self.connections = 0
        self._thread = threading.Thread(target=self._read, args=(client, path, headers or {}), daemon=True)
        self._thread.start()

    def _read(self, client: httpx.Client, path: str, headers: dict[str, str]) -> None:
        try:
            with client.stream("GET", path, headers=headers, timeout=httpx.Timeout(10, read=60)) as response:
                self.connections += 1
                assert response.status_code == 200, response.read()
                event, event_id = "message", None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("id: "):
                        event_id = line.removeprefix("id: ")
                    elif line.startswith("data: "):
                        self.events.append((event, event_id, json.loads(line.removeprefix("data: "))))
                        if event == "end":
                            return
                        event, event_id = "message", None
        except BaseException as exc:  # reported by the test
            self.error = exc

    def steps(self) -> list[int]:
        return [data["step"] for event, _, data in self.events if event == "metrics"]

    def wait(self, done: Callable[["StreamReader"], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done(self):
            assert self.error is None, repr(self.error)
            assert time.monotonic() < deadline, self.events
            time.sleep(0.05)


def test_a_metrics_stream_keeps_its_connection_through_a_redis_outage_and_restart(
    outage_server: Server, own_redis: RedisServer
) -> None:
    key = outage_server.new_key()
    job_id = running_job(outage_server)
    worker = Worker(outage_server, job_id)
    for step in (1, 2, 3):
        worker.step(step)
    path = f"/v1/fine_tuning/jobs/{job_id}/metrics/stream"
    with outage_server.client(key) as client:
        reader = StreamReader(client, path)
        reader.wait(lambda r: r.steps() == [1, 2, 3])
        own_redis.stop()
        down = time.monotonic()
        worker.step(4, live=False)  # Redis is gone: the worker's steps reach only the DB
        worker.step(5, live=False)
        reader.wait(lambda r: r.steps()[-1:] == [5])
        delivered_down_s = time.monotonic() - down
        own_redis.start()  # empty: the worker rebuilds the stream (steps 1-5 again, then 6)
        worker.step(6)
        reader.wait(lambda r: r.steps()[-1:] == [6])
        worker.finish()
        reader.wait(lambda r: r.events[-1][0] == "end")
        assert reader.error is None and reader.connections == 1
        assert reader.steps() == [1, 2, 3, 4, 5, 6]  # every step once, none replayed from the rebuilt stream
        ids = [event_id for event, event_id, _ in reader.events if event == "metrics"]
        assert ids[3:5] == ["step-4", "step-5"]  # from the DB while Redis was away
        assert all(event_id and event_id.count("-") == 1 and event_id[0].isdigit() for event_id in ids[5:])
        assert reader.events[-1][2] == {"status": "succeeded"}
        # A client that reconnects with an id sent from the DB resumes after that step.
        resumed = StreamReader(client, path, headers={"Last-Event-ID": "step-4"})
        resumed.wait(lambda r: bool(r.events) and r.events[-1][0] == "end")
        assert resumed.steps() == [5, 6]
    print(
        f"one connection: steps 1-6 each once; steps 4-5 (DB only) delivered {delivered_down_s:.1f}s "
        "into the outage"
    )


def test_a_bare_subscription_while_redis_is_away_gets_the_newest_points_from_the_db(
    outage_server: Server, own_redis: RedisServer
) -> None:
    key = outage_server.new_key()
    job_id = running_job(outage_server)
    worker = Worker(outage_server, job_id)
    tail = Settings.model_fields["stream_tail_records"].default
    for step in range(1, tail + 4):
        worker.step(step, live=False)
    own_redis.stop()
    with outage_server.client(key) as client:
        reader = StreamReader(client, f"/v1/fine_tuning/jobs/{job_id}/metrics/stream")
        reader.wait(lambda r: bool(r.steps()))
        worker.step(tail + 4, live=False)
        reader.wait(lambda r: r.steps()[-1:] == [tail + 4])
        worker.finish()
        reader.wait(lambda r: r.events[-1][0] == "end")
    assert reader.steps() == list(range(4, tail + 5))  # the newest `tail` points, then each new one
    assert [event_id for _, event_id, _ in reader.events[:2]] == ["step-4", "step-5"]


def test_pause_and_cancel_during_a_redis_outage_are_answered_and_the_pause_reaches_the_worker(
    outage_server: Server, own_redis: RedisServer, tmp_path: Path
) -> None:
    key = outage_server.new_key()
    to_pause, to_cancel = running_job(outage_server, "w:1"), running_job(outage_server, "w:2")
    reporter = JobReporter(  # the worker's side of `to_pause`: its heartbeat reads the job row
        job_id=to_pause,
        worker_id="w:1",
        model_name="ft:sppo-tiny:x",
        store=ArtifactStore(None, tmp_path),
        sessions=get_sessionmaker(outage_server.db_url),
        redis_client=redis.Redis.from_url(own_redis.url, socket_connect_timeout=1, socket_timeout=1),
        heartbeat_interval_s=0.2,
        db_retry_s=2,
    )
    try:
        own_redis.stop()
        asked = time.monotonic()
        with outage_server.client(key) as api:
            paused = api.post(f"/v1/fine_tuning/jobs/{to_pause}/pause")
            assert paused.status_code == 200, paused.text
            assert paused.json()["status"] == "running"  # until the worker has checkpointed
            cancelled = api.post(f"/v1/fine_tuning/jobs/{to_cancel}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
        while reporter.control() != "pause":
            assert time.monotonic() - asked < 5, "the worker never saw the pause"
            time.sleep(0.05)
        seen_s = time.monotonic() - asked
        print(f"pause answered 200 with Redis down; the worker saw it {seen_s:.2f}s after the request")
    finally:
        reporter.close()
