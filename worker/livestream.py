"""A job's live metrics stream in Redis (core/streams.py): appended per step, repaired when Redis lost it.

Best effort throughout: the DB's metric points are the truth, so a Redis error (or a failed DB read for a
repair) is logged, never raised.
"""

import logging
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.models import MetricPoint, now
from core.streams import STREAM_MAXLEN, STREAM_TTL_S, decode_step, encode_step, metrics_stream_key

log = logging.getLogger(__name__)

Records = list[dict[str, str]]


def publish_step(
    client: "redis.Redis",
    job_id: str,
    step: int,
    metrics: dict[str, float],
    earlier: Callable[[int], Records],
) -> None:
    """Append `step`. A stream missing after step 1 was lost (Redis restarted empty, or it expired while
    the job was paused): `earlier(step)` records go in first, so live clients see the whole series."""
    key = metrics_stream_key(job_id)
    try:
        records = earlier(step) if step > 1 and not client.exists(key) else []
        pipe = client.pipeline()
        for record in [*records, encode_step(step, metrics, now())]:
            pipe.xadd(key, record, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.expire(key, STREAM_TTL_S)
        pipe.execute()
        if records:
            log.warning("job %s: stream lost; %d earlier step(s) appended again", job_id, len(records))
    except redis.RedisError:
        log.warning("could not publish step %d of job %s to Redis", step, job_id, exc_info=True)


def drop_steps_after(client: "redis.Redis", job_id: str, step: int) -> None:
    """Steps after the resumed checkpoint will run again: remove their stale live records."""
    key = metrics_stream_key(job_id)
    try:
        records: Any = client.xrevrange(key, count=STREAM_MAXLEN)
        stale = [entry_id for entry_id, fields in records if decode_step(fields)["step"] > step]
        if stale:
            client.xdel(key, *stale)
    except redis.RedisError:
        log.warning("could not trim the metrics stream of job %s", job_id, exc_info=True)


def earlier_steps(
    sessions: sessionmaker[Session], job_id: str, step: int, pending: dict[int, dict[str, float]]
) -> Records:
    """Stream records of the steps before `step`, to repair a lost stream: the DB's, with `pending` (steps
    not flushed yet) over them."""
    try:
        with sessions() as session:
            stored = session.execute(
                select(MetricPoint.step, MetricPoint.metrics, MetricPoint.created_at)
                .where(MetricPoint.job_id == job_id, MetricPoint.step < step)
                .order_by(MetricPoint.step.desc())
                .limit(STREAM_MAXLEN)
            ).all()
    except SQLAlchemyError:  # the live view is best effort: never stop training for it
        log.warning("could not read the steps of job %s to repair its stream", job_id)
        stored = []
    points = {s: (m, created) for s, m, created in stored}
    points |= {s: (m, now()) for s, m in pending.items() if s < step}
    return [encode_step(s, m, created) for s, (m, created) in sorted(points.items())]
