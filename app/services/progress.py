"""A job's progress for clients: the metric series (DB), the live stream (Redis) and checkpoint adapters.

The live stream is read with blocking `XREAD`s, so an idle stream costs one Redis round trip per
`BLOCK_MS`, and the job's status is checked between reads: when the job has finished and everything it
wrote has been sent, the stream ends with an `end` event carrying the final status.
"""

import asyncio
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import shutdown
from app.db import get_sessionmaker
from app.errors import InvalidRequest, NotFound
from app.models import FINISHED_STATUSES, Checkpoint, Job, MetricPoint, Tenant
from app.services.jobs import get_job
from app.services.model_card import model_card, portable_adapter_config
from app.settings import Settings
from app.storage import artifact_store
from app.streams import metrics_stream_key

log = logging.getLogger(__name__)

BLOCK_MS = 2000  # how soon the end of a job is noticed on an idle stream
KEEP_ALIVE_S = 15.0
READ_COUNT = 500
_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})", re.ASCII)
_MAX_ID_PART = 2**64 - 1
STATUS_TTL_S = 1.0  # how stale a stream's view of its job's status may be (the stream blocks 2 s anyway)
UNKNOWN = "unknown"  # a status read that failed: not finished, ask again
_STATUS_READS_MAX = 10_000
_status_reads: dict[str, tuple[float, "asyncio.Future[str | None]"]] = {}


def list_metrics(
    session: Session, *, tenant: Tenant, job_id: str, after_step: int | None, limit: int
) -> tuple[list[MetricPoint], bool]:
    """Metric points in step order, after `after_step`; returns (points, has_more)."""
    get_job(session, tenant=tenant, job_id=job_id)
    query = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if after_step is not None:
        query = query.where(MetricPoint.step > after_step)
    points = list(session.scalars(query.order_by(MetricPoint.step).limit(limit + 1)))
    return points[:limit], len(points) > limit


def check_stream_cursor(last_event_id: str | None) -> str:
    """The stream id to read after: the client's Last-Event-ID, or the start of the stream."""
    if last_event_id is None or last_event_id == "":
        return "0-0"
    match = _STREAM_ID.fullmatch(last_event_id)
    # Redis stream ids are two unsigned 64-bit numbers; a larger one would abort the stream mid-way.
    if match is None or any(int(part) > _MAX_ID_PART for part in match.groups()):
        raise InvalidRequest("Last-Event-ID must be an id sent by this stream.", param="Last-Event-ID")
    return last_event_id


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


def _sse(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def metric_events(settings: Settings, *, job_id: str, cursor: str) -> AsyncIterator[str]:
    """Server-Sent Events: one `metrics` event per stream record (id = stream id), then `end`.

    Holds no DB connection: the caller authorized the request in its own short session. When the server
    shuts down the stream just stops, and the client reconnects with its Last-Event-ID.
    """
    client = aioredis.Redis.from_url(str(settings.redis_url), socket_connect_timeout=2)
    key = metrics_stream_key(job_id)
    try:
        yield "retry: 2000\n\n"
        last_sent = time.monotonic()
        while not shutdown.stopping():
            status = await _job_status(job_id)
            finished = status is None or status in FINISHED_STATUSES
            # A finished job wrote its last record before its final status: read what is left, no waiting.
            block = None if finished else BLOCK_MS
            batches: Any = await client.xread({key: cursor}, count=READ_COUNT, block=block)
            records: list[tuple[bytes, dict[bytes, bytes]]] = batches[0][1] if batches else []
            for entry_id, fields in records:
                cursor = entry_id.decode()
                yield _sse("metrics", fields[b"data"].decode(), cursor)
                last_sent = time.monotonic()
            if finished and not records:
                yield _sse("end", json.dumps({"status": status}))
                return
            if time.monotonic() - last_sent >= KEEP_ALIVE_S:
                yield ": keep-alive\n\n"  # lets proxies and clients see the connection is alive
                last_sent = time.monotonic()
    finally:
        await client.aclose()


def get_checkpoint(session: Session, *, tenant: Tenant, job_id: str, checkpoint_id: str) -> Checkpoint:
    get_job(session, tenant=tenant, job_id=job_id)
    checkpoint = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.id == checkpoint_id)
    )
    if checkpoint is None:
        raise NotFound(f"No checkpoint '{checkpoint_id}' in job '{job_id}'.", param="checkpoint_id")
    return checkpoint


def adapter_archive(settings: Settings, checkpoint: Checkpoint, job: Job) -> Path:
    """A temporary .tar.gz of the checkpoint's peft adapter, as `<checkpoint id>/adapter_config.json, ...`.

    Extract it and pass the folder to `peft.PeftModel.from_pretrained(base_model, folder)`: its config
    names the base model by registry name and a README.md model card tells how. The caller deletes the
    file once it is sent.
    """
    store = artifact_store(settings)
    if not store.exists(f"{checkpoint.uri}/adapter_config.json"):
        raise NotFound(
            f"The adapter of checkpoint '{checkpoint.id}' is no longer stored.", param="checkpoint_id"
        )
    fd, name = tempfile.mkstemp(prefix="sppo-adapter-", suffix=".tar.gz")
    os.close(fd)
    try:
        with store.local_copy(checkpoint.uri) as source, tarfile.open(name, "w:gz") as archive:
            for file in sorted(source.iterdir()):
                if file.name in ("adapter_config.json", "README.md") or not file.is_file():
                    continue
                archive.add(file, arcname=f"{checkpoint.id}/{file.name}")
            config = portable_adapter_config(
                (source / "adapter_config.json").read_bytes(), base_model=job.model
            )
            _add_bytes(archive, f"{checkpoint.id}/adapter_config.json", config)
            _add_bytes(archive, f"{checkpoint.id}/README.md", model_card(job, checkpoint).encode())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _add_bytes(archive: tarfile.TarFile, arcname: str, content: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime, info.mode = len(content), int(time.time()), 0o644
    archive.addfile(info, io.BytesIO(content))
