"""Per-key rate limits and quotas, shared by two API processes through the real Redis.

Two `uvicorn app.main:app` processes share one database and one Redis database, with limits small enough
to reach in a few requests; a third runs against an unreachable Redis to show the fail-open choice.
"""

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.datastructures import Headers

from app.ratelimit import STREAM_SLOT_TTL_S, Limiter, Window
from app.throttle import subject_of, windows_for
from core.settings import Settings

from ..app.conftest import GRADER, ITEM, Server, assert_error, method, migrate, run_api_server
from ..conftest import run_in_own_loop

T = TypeVar("T")
LIMITS = {
    "SPPO_RATE_LIMIT_REQUESTS_PER_SECOND": "0",
    "SPPO_RATE_LIMIT_REQUESTS_PER_MINUTE": "10",
    "SPPO_RATE_LIMIT_UPLOADS_PER_HOUR": "2",
    "SPPO_RATE_LIMIT_EVALUATIONS_PER_HOUR": "1",
    "SPPO_RATE_LIMIT_STREAMS": "2",
    "SPPO_MAX_UPLOAD_BYTES": str(64 * 1024),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Server, Server]]:
    """Two API processes with the small LIMITS, sharing the database and the Redis database."""
    data_dir = tmp_path_factory.mktemp("sppo-limits")
    db_url = f"sqlite:///{data_dir / 'api.db'}"
    migrate(data_dir, db_url)
    with (
        run_api_server(data_dir, db_url=db_url, redis_url=redis_url, env=LIMITS) as first,
        run_api_server(data_dir, db_url=db_url, redis_url=redis_url, env=LIMITS) as second,
    ):
        yield first, second


def in_one_window(seconds: int, attempt: Callable[[], T]) -> T:
    """`attempt()` run so that it starts and ends in the same fixed window (the limiter's clock is this
    machine's): a run that straddles a window boundary is repeated with fresh keys."""
    for _ in range(3):
        started = int(time.time()) // seconds
        result = attempt()
        if int(time.time()) // seconds == started:
            return result
    raise AssertionError("every attempt straddled a window boundary")


def _retry_after(response: httpx.Response, most: int) -> int:
    value = int(response.headers["retry-after"])
    assert 1 <= value <= most, value
    return value


def test_two_processes_share_one_request_limit(pair: tuple[Server, Server]) -> None:
    first, second = pair

    def burst() -> list[httpx.Response]:
        key = first.new_key()
        with first.client(key) as a, second.client(key) as b:
            return [client.get("/v1/models") for _ in range(7) for client in (a, b)]

    responses = in_one_window(60, burst)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 4, codes
    refused = next(r for r in responses if r.status_code == 429)
    error = assert_error(refused, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    _retry_after(refused, 60)
    # another key has its own budget, on either process
    with second.client(first.new_key()) as other:
        assert other.get("/v1/models").status_code == 200


def test_uploads_have_an_hourly_quota_refused_before_the_body_is_stored(pair: tuple[Server, Server]) -> None:
    first, second = pair
    key = first.new_key()
    with first.client(key) as a, second.client(key) as b:
        for client in (a, b):
            created = _upload(client)
            assert created.status_code == 200, created.text
        refused = _upload(a)
        assert_error(refused, 429)
        _retry_after(refused, 3600)
        assert len(b.get("/v1/files").json()["data"]) == 2
        # the quota counts uploads only: reads of the same key go on
        assert a.get("/v1/models").status_code == 200


def test_refused_uploads_do_not_use_up_the_quota(pair: tuple[Server, Server]) -> None:
    """Uploads refused with 400 or 413 (by Content-Length or while a chunked body arrives) do no work: the
    quota of 2 still admits two uploads after them, then refuses the third."""
    first, second = pair

    def attempt() -> list[int]:
        key = first.new_key()
        with first.client(key) as a, second.client(key) as b:
            codes = [_upload(a, b"not json\n").status_code, _upload(b, ITEM.encode() * 2000).status_code]
            chunked = a.post(
                "/v1/files",
                content=(part for part in (MULTIPART_HEAD, ITEM.encode() * 2000, b"\r\n--b--\r\n")),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
            return [*codes, chunked.status_code, *(_upload(c).status_code for c in (a, b, a))]

    assert in_one_window(3600, attempt) == [400, 413, 413, 200, 200, 429]


def test_evaluations_quota_counts_created_evaluations_only(pair: tuple[Server, Server]) -> None:
    first, second = pair

    def attempt() -> list[int]:
        key = first.new_key()
        with first.client(key) as a, second.client(key) as b:
            body = {"model": "sppo-tiny", "file": _upload(a).json()["id"], "grader": GRADER, "samples": 1}
            invalid = [
                a.post("/v1/evaluations", json={}),
                b.post("/v1/evaluations", json=body | {"samples": 0}),
            ]
            created = b.post("/v1/evaluations", json=body)
            assert created.status_code == 200, created.text
            refused = a.post("/v1/evaluations", json=body)
            assert assert_error(refused, 429)["type"] == "rate_limit_error"
            return [r.status_code for r in (*invalid, created, refused)]

    assert in_one_window(3600, attempt) == [400, 400, 200, 429]


MULTIPART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
)


def _upload(client: httpx.Client, content: bytes = ITEM.encode()) -> httpx.Response:
    return client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", content)})


def _queued_job(client: httpx.Client) -> str:
    file = _upload(client)
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "sppo-tiny", "training_file": file.json()["id"], "method": method(batch_size=1)},
    )
    assert job.status_code == 200, job.text
    return str(job.json()["id"])  # no worker runs here: it stays queued and its stream stays open


def test_open_streams_per_key_are_bounded_across_processes(pair: tuple[Server, Server]) -> None:
    first, second = pair
    key = first.new_key()
    with first.client(key) as a, second.client(key) as b:
        path = f"/v1/fine_tuning/jobs/{_queued_job(a)}/metrics/stream"
        with a.stream("GET", path) as one, b.stream("GET", path) as two:
            assert one.status_code == 200 and two.status_code == 200
            third = a.get(path)
            error = assert_error(third, 429)
            assert error["code"] == "too_many_streams"
            _retry_after(third, 60)
        # closing the streams frees their slots (released when each response ends)
        deadline = time.monotonic() + 10
        while True:
            with b.stream("GET", path) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "slots were not released"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def no_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("sppo-no-redis")
    db_url = f"sqlite:///{data_dir / 'api.db'}"
    migrate(data_dir, db_url)
    with run_api_server(data_dir, db_url=db_url, redis_url="redis://127.0.0.1:1/0", env=LIMITS) as running:
        yield running


def test_without_redis_reads_pass_and_writes_wait(no_redis: Server) -> None:
    with no_redis.client(no_redis.new_key()) as client:
        for _ in range(12):  # past the per-minute limit: nothing counts while Redis is away
            assert client.get("/v1/models").status_code == 200
        refused = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", b"{}")})
        error = assert_error(refused, 503)
        assert error["code"] == "service_unavailable"
        _retry_after(refused, 60)
    log = "".join(p.read_text() for p in Path(no_redis.data_dir).glob("server-*.log"))
    assert log.count("rate limiter unreachable") == 1  # one line, not one per request


def test_subject_is_a_hash_of_the_credential() -> None:
    bearer = subject_of(Headers({"authorization": "Bearer sk-sppo-abc"}))
    assert bearer is not None and len(bearer) == 32 and "abc" not in bearer
    assert subject_of(Headers({"authorization": "bearer  sk-sppo-abc "})) == bearer
    cookie = subject_of(Headers({"cookie": "sppo_session=xyz; other=1"}))
    assert cookie is not None and cookie != bearer
    assert subject_of(Headers({"authorization": "Basic abc"})) is None
    assert subject_of(Headers({})) is None


def test_windows_for_each_kind_of_request() -> None:
    settings = Settings(rate_limit_requests_per_second=3, rate_limit_requests_per_minute=4)
    base = [Window("requests", 3, 1), Window("requests", 4, 60)]
    assert windows_for(settings, "GET", "/v1/files") == base
    uploads = Window("uploads", 300, 3600, accepted_only=True)
    assert windows_for(settings, "POST", "/v1/files") == [*base, uploads]
    # the form stores its upload before it creates the job: a refused form may have stored a file
    assert windows_for(settings, "POST", "/jobs/new")[-1] == Window("uploads", 300, 3600)
    evaluations = Window("evaluations", 300, 3600, accepted_only=True)
    assert windows_for(settings, "POST", "/v1/evaluations")[-1] == evaluations
    grader_runs = Window("grader_runs", 120, 60, accepted_only=True)
    assert windows_for(settings, "POST", "/v1/fine_tuning/alpha/graders/run")[-1] == grader_runs
    assert windows_for(settings, "GET", "/v1/evaluations") == base


def test_limiter_scripts_on_the_real_redis(redis_url: str) -> None:
    """A refused request is not counted; a stream slot whose holder stopped refreshing lapses."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        prefix = f"test-{uuid.uuid4().hex[:8]}:ratelimit"  # SPPO_REDIS_PREFIX's place in every key
        limiter = Limiter(client, prefix)
        subject = uuid.uuid4().hex
        hourly = [Window("uploads", 2, 3600, accepted_only=True), Window("requests", 10, 60)]
        hits = [await limiter.hit(subject, hourly) for _ in range(4)]
        assert [hit.retry_after for hit in hits[:2]] == [0, 0] and 0 < hits[2].retry_after <= 3600
        [uploads] = await client.keys(f"{prefix}:uploads:{subject}:3600:*")
        [requests] = await client.keys(f"{prefix}:requests:{subject}:60:*")
        assert int(await client.get(uploads)) == 2  # the two refusals left no trace
        assert hits[0].refundable == (uploads.decode(),) and hits[2].refundable == ()

        # the API refused the first request: its upload is given back, its request stays counted
        await limiter.give_back(hits[0])
        assert (int(await client.get(uploads)), int(await client.get(requests))) == (1, 2)
        assert (await limiter.hit(subject, hourly)).retry_after == 0
        # a counter whose window ended is gone: giving back does not bring it back below zero
        await client.delete(uploads)
        await limiter.give_back(hits[1])
        assert await client.exists(uploads) == 0

        assert await limiter.acquire_stream(subject, "a", 1)
        assert not await limiter.acquire_stream(subject, "b", 1)
        # the process holding "a" was killed: its last refresh is older than the slot's TTL
        now = int((await client.time())[0])
        await client.zadd(f"{prefix}:streams:{subject}", {"a": now - STREAM_SLOT_TTL_S - 1})
        assert await limiter.acquire_stream(subject, "b", 1)
        await limiter.release_stream(subject, "b")
        assert await client.zcard(f"{prefix}:streams:{subject}") == 0
        await client.aclose()

    run_in_own_loop(scenario())
