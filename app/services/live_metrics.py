"""A job's live metrics as Server-Sent Events: from the Redis Stream, and from the DB while Redis is away.

The stream is read with blocking `XREAD`s, so an idle stream costs one Redis round trip per `BLOCK_MS`, and
the job's status is checked between reads: when the job has finished and everything it wrote has been
sent, the stream ends with an `end` event carrying the final status.

Redis is a live view only (the DB has every step), so a Redis outage does not end a stream: while Redis
cannot be read, the stream sends the DB's metric points after the last step it sent (ids `step-<N>`,
polled every `BLOCK_MS`), and once Redis answers again it reads on from the record of that step, in
whatever stream the worker has rebuilt meanwhile. Steps only move forward on one connection: a record for
a step already sent (a stream rebuilt from step 1 after Redis restarted empty, or a step re-run after a
crash) is skipped, as the dashboard does; the DB's series (`/metrics`) has the final values.

A subscriber asks for what it lacks: after its `Last-Event-ID` (a reconnect) or its `from` id (a page that
loaded the series as JSON), or, naming neither, the stream's newest `stream_tail_records` records and then
what comes. `from=0-0` asks for the whole stream. Replaying a long stream to every new subscriber delayed
the live records of all of them (issue 21).
"""

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import select

from app import shutdown
from app.errors import InvalidRequest
from core.db import get_sessionmaker
from core.models import FINISHED_STATUSES, Job, MetricPoint
from core.settings import Settings
from core.streams import decode_step, encode_step, metrics_stream_key

log = logging.getLogger(__name__)

BLOCK_MS = 2000  # how soon the end of a job is noticed on an idle stream (and the DB polled without Redis)
KEEP_ALIVE_S = 15.0
READ_COUNT = 500
_REDIS_ID = re.compile(r"(\d{1,20})-(\d{1,20})", re.ASCII)
_STEP_ID = re.compile(r"step-(\d{1,19})", re.ASCII)
_MAX_ID_PART = 2**64 - 1
_MAX_STEP = 2**63 - 1  # steps are 64-bit signed in the DB
STATUS_TTL_S = 1.0  # how stale a stream's view of its job's status may be (the stream blocks 2 s anyway)
UNKNOWN = "unknown"  # a status read that failed: not finished, ask again
_STATUS_READS_MAX = 10_000
_status_reads: dict[str, tuple[float, "asyncio.Future[str | None]"]] = {}


@dataclass
class Cursor:
    """Where a stream reads on: after a Redis record (`redis_id`), or, when that is unknown (Redis was away,
    or the client resumes from a DB-sourced event), after the record of `step`; with neither (nothing sent
    yet to a subscriber that named no id), at the newest `tail` records."""

    redis_id: str | None = "0-0"
    step: int | None = None
    tail: int | None = None


def stream_cursor(last_event_id: str | None, start: str | None, *, tail: int) -> Cursor:
    """Where a subscription starts: after its Last-Event-ID (sent on a reconnect, so it wins), else after
    its `from` id, else at the stream's newest `tail` records."""
    if last_event_id:
        return _cursor_after(last_event_id, param="Last-Event-ID")
    if start:
        return _cursor_after(start, param="from")
    return Cursor(redis_id=None, tail=tail)


def _cursor_after(event_id: str, *, param: str) -> Cursor:
    """After an id this stream sends: a Redis stream id, or `step-<N>`."""
    if (step := _STEP_ID.fullmatch(event_id)) is not None and int(step.group(1)) <= _MAX_STEP:
        return Cursor(redis_id=None, step=int(step.group(1)))
    match = _REDIS_ID.fullmatch(event_id)
    # Redis stream ids are two unsigned 64-bit numbers; a larger one would abort the stream mid-way.
    if match is None or any(int(part) > _MAX_ID_PART for part in match.groups()):
        raise InvalidRequest(f"{param} must be an id sent by this stream.", param=param)
    return Cursor(redis_id=event_id)


def _read_status(job_id: str) -> str | None:
    with get_sessionmaker()() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))


async def _job_status(job_id: str) -> str | None:
    """The job's status, read at most once per STATUS_TTL_S per process however many streams watch the job.

    A short session in a thread, never held while streaming; a failed read (DB busy or down) answers
    UNKNOWN, and the stream goes on and asks again.
    """
    stamp = time.monotonic()
    entry = _status_reads.get(job_id)
    if entry is None or stamp - entry[0] > STATUS_TTL_S:
        if len(_status_reads) > _STATUS_READS_MAX:
            _status_reads.clear()
        entry = (stamp, asyncio.ensure_future(asyncio.to_thread(_read_status, job_id)))
        _status_reads[job_id] = entry
    try:
        return await asyncio.shield(entry[1])
    except Exception:
        log.warning("could not read the status of job %s for its stream", job_id, exc_info=True)
        return UNKNOWN


def _read_points(job_id: str, cursor: Cursor) -> list[tuple[int, str]]:
    """(step, record data) of the DB's metric points after the cursor's step (none yet: its tail), in the
    stream's record format."""
    query = select(MetricPoint.step, MetricPoint.metrics, MetricPoint.created_at).where(
        MetricPoint.job_id == job_id
    )
    if cursor.step is not None:
        query = query.where(MetricPoint.step > cursor.step)
    if cursor.step is None and cursor.tail is not None:
        query = query.order_by(MetricPoint.step.desc()).limit(cursor.tail)
    else:
        query = query.order_by(MetricPoint.step).limit(READ_COUNT)
    with get_sessionmaker()() as session:
        rows = session.execute(query).all()
    return sorted(
        (step, encode_step(step, metrics, created_at)["data"]) for step, metrics, created_at in rows
    )


async def _tail(client: "aioredis.Redis", key: str, cursor: Cursor, tail: int) -> list[Any]:
    """The stream's newest `tail` records, oldest first; the cursor moves past them."""
    newest: Any = await client.xrevrange(key, count=tail)
    cursor.redis_id = newest[0][0].decode() if newest else "0-0"
    return list(reversed(newest))


async def _resume_id(client: "aioredis.Redis", key: str, step: int) -> str:
    """The id of the newest record whose step is at most `step` ("0-0": none), to read on after it."""
    newest = "+"
    while True:
        batch: Any = await client.xrevrange(key, max=newest, count=100)
        if not batch:
            return "0-0"
        for entry_id, fields in batch:
            if decode_step(fields)["step"] <= step:
                return str(entry_id.decode())
        newest = f"({batch[-1][0].decode()}"


async def _step_of(client: "aioredis.Redis", key: str, entry_id: str) -> int | None:
    """The step of the record a client resumes after, so that a Redis outage later cannot replay steps to
    it; None when Redis is away or no longer holds the record."""
    try:
        found: Any = await client.xrange(key, min=entry_id, max=entry_id, count=1)
    except (RedisError, OSError):
        return None
    return int(decode_step(found[0][1])["step"]) if found else None


def _sse(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def metric_events(settings: Settings, *, job_id: str, cursor: Cursor) -> AsyncIterator[str]:
    """Server-Sent Events: one `metrics` event per step (id = Redis stream id, or `step-<N>` from the DB),
    then `end`.

    Holds no DB connection but for its short reads: the caller authorized the request in its own short
    session. When the server shuts down the stream just stops, and the client reconnects with its
    Last-Event-ID.
    """
    # A socket timeout above the block time, so a Redis that hangs (not only one that refuses) is noticed.
    client = aioredis.Redis.from_url(
        str(settings.redis_url), socket_connect_timeout=2, socket_timeout=BLOCK_MS / 1000 + 3
    )
    key = metrics_stream_key(job_id)
    redis_down = False
    try:
        yield "retry: 2000\n\n"
        if cursor.redis_id not in (None, "0-0"):
            cursor.step = await _step_of(client, key, cursor.redis_id)
        last_sent = time.monotonic()
        while not shutdown.stopping():
            status = await _job_status(job_id)
            finished = status is None or status in FINISHED_STATUSES
            try:
                events = await _redis_events(client, key, cursor, finished=finished)
                if redis_down:
                    log.info("metrics stream of job %s reads Redis again", job_id)
                    redis_down = False
            except (RedisError, OSError):
                if not redis_down:
                    log.warning("Redis unreachable; metrics stream of job %s reads the DB", job_id)
                    redis_down = True
                cursor.redis_id = None  # read on from the last step sent, once Redis is back
                events = await _db_events(job_id, cursor)
            for step, data, event_id in events:
                if cursor.step is not None and step <= cursor.step:
                    continue  # sent already (see the module docstring)
                cursor.step = step
                yield _sse("metrics", data, event_id)
                last_sent = time.monotonic()
            if finished and not events:
                yield _sse("end", json.dumps({"status": status}))
                return
            if redis_down and not events:
                await asyncio.sleep(BLOCK_MS / 1000)
            if time.monotonic() - last_sent >= KEEP_ALIVE_S:
                yield ": keep-alive\n\n"  # lets proxies and clients see the connection is alive
                last_sent = time.monotonic()
    finally:
        await client.aclose()


async def _redis_events(
    client: "aioredis.Redis", key: str, cursor: Cursor, *, finished: bool
) -> list[tuple[int, str, str]]:
    """(step, data, event id) of the records after the cursor, which moves past them; waits up to BLOCK_MS
    for one unless the job has finished."""
    if cursor.redis_id is None and cursor.step is None and cursor.tail is not None:
        entries = await _tail(client, key, cursor, cursor.tail)
    else:
        if cursor.redis_id is None:
            cursor.redis_id = "0-0" if cursor.step is None else await _resume_id(client, key, cursor.step)
        # A finished job wrote its last record before its final status: read what is left, no waiting.
        batches: Any = await client.xread(
            {key: cursor.redis_id}, count=READ_COUNT, block=None if finished else BLOCK_MS
        )
        entries = batches[0][1] if batches else []
        if entries:
            cursor.redis_id = entries[-1][0].decode()
    return [
        (decode_step(fields)["step"], fields[b"data"].decode(), entry_id.decode())
        for entry_id, fields in entries
    ]


async def _db_events(job_id: str, cursor: Cursor) -> list[tuple[int, str, str]]:
    try:
        points = await asyncio.to_thread(_read_points, job_id, cursor)
    except Exception:  # the DB is busy or away too: send nothing now, ask again
        log.warning("could not read the metric points of job %s for its stream", job_id, exc_info=True)
        return []
    return [(step, data, f"step-{step}") for step, data in points]
