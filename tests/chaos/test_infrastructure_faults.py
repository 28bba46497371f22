"""Faults of the services around the worker: PostgreSQL connections dropped, Redis emptied, a worker
killed during an evaluation."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
import sqlalchemy as sa

from core.db import session_scope
from core.models import Evaluation
from core.streams import decode_step, metrics_stream_key
from tests.chaos.conftest import STEPS, assert_recorded_once, only_worker
from tests.e2e.conftest import FINISHED, Stack, jsonl, wait_for
from worker.engine.checkpoint import CRASH_AT_ENV, CRASH_EXIT_CODE
from worker.engine.fixtures import FIXTURE_GRADER, Fixture

pytestmark = pytest.mark.timeout(1800)
WORKER_APP = "sppo-chaos-worker"  # libpq's PGAPPNAME: how the test finds the worker's connections
TERMINATE = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :app"


@contextlib.contextmanager
def terminating_worker_backends(db_url: str, every_s: float = 0.25) -> Iterator[list[int]]:
    """pg_terminate_backend on every connection of the worker, every `every_s`, while the block runs."""
    engine = sa.create_engine(db_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    stop = threading.Event()
    ended: list[int] = []

    def loop() -> None:
        with engine.connect() as conn:
            while not stop.wait(every_s):
                ended.append(int(conn.execute(sa.text(TERMINATE), {"app": WORKER_APP}).scalar_one()))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield ended
    finally:
        stop.set()
        thread.join()
        engine.dispose()


def test_a_flaky_database_delays_a_job_but_never_fails_it(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str]
) -> None:
    only_worker(stack, PGAPPNAME=WORKER_APP)
    started = time.monotonic()
    with terminating_worker_backends(stack.db_url) as ended:
        job_id = start_job()
        job = wait_for(api, job_id, lambda j: j["status"] in FINISHED)
    assert sum(ended) > 0, "no worker connection was ever terminated"
    assert job["status"] == "succeeded", job
    assert_recorded_once(stack, api, job_id)
    print(f"{sum(ended)} worker connections terminated; job took {time.monotonic() - started:.1f}s")


def test_redis_emptied_mid_job_loses_no_step_and_the_stream_is_whole_again(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str]
) -> None:
    only_worker(stack)
    job_id = start_job()
    wait_for(api, job_id, lambda j: j["status"] in FINISHED or j["status"] == "running")
    client = redis.Redis.from_url(stack.redis_url)
    key = metrics_stream_key(job_id)
    deadline = time.monotonic() + 900
    while not client.exists(key):  # the first step is live
        assert time.monotonic() < deadline
        time.sleep(0.1)
    marker = client.get("sppo-test-run")  # this database's claim by the test run (tests/conftest.py)
    client.flushdb()  # as a Redis restarted without persistence: stream, control keys, broker state gone
    client.set("sppo-test-run", marker or b"chaos", ex=3600)
    assert_recorded_once(stack, api, job_id)
    steps = [decode_step(fields)["step"] for _, fields in client.xrange(key)]
    assert steps == list(range(1, STEPS + 1)) or steps == []  # whole again, or lost after the last step


def test_a_worker_killed_during_an_evaluation_finishes_it_on_the_next_worker(
    stack: Stack, api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    crashing = only_worker(stack, **{CRASH_AT_ENV: "evaluation.scored"})
    body = {"model": "sppo-tiny", "file": upload(jsonl(tiny.validation_file, 0, 4)), "grader": FIXTURE_GRADER}
    response = api.post("/v1/evaluations", json=body)
    assert response.status_code == 200, response.text
    evaluation_id = response.json()["id"]
    assert crashing.wait(timeout=900) == CRASH_EXIT_CODE  # scored, then died before recording
    killed = time.monotonic()
    stack.start_worker()
    while (evaluation := api.get(f"/v1/evaluations/{evaluation_id}").json())["status"] not in FINISHED:
        assert time.monotonic() - killed < 900, evaluation
        time.sleep(0.2)
    recovery_s = time.monotonic() - killed
    assert evaluation["status"] == "succeeded", evaluation
    assert evaluation["scores"] and evaluation["results_url"]
    with session_scope(stack.db_url) as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None and row.attempt == 2
    print(f"evaluation finished {recovery_s:.1f}s after its worker was killed (lease 6 s)")
