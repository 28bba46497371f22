"""Live training metrics in Redis Streams: the key, the record format and the cap, shared by API and worker.

The worker appends one record per training step (`XADD ... MAXLEN ~ STREAM_MAXLEN`); the API reads it
with blocking `XREAD` for Server-Sent Events. The stream is a live view only: the DB's metric points are
the truth (a capped stream drops old steps, and a step re-run after a crash is appended again).
"""

import json
from typing import Any

from core.queues import redis_key

# Enough for the live view of a long run; older steps are served from the DB.
STREAM_MAXLEN = 10_000
# Streams of finished jobs expire; the DB keeps the series.
STREAM_TTL_S = 7 * 24 * 3600


def metrics_stream_key(job_id: str) -> str:
    return redis_key(f"jobs:{job_id}:metrics")


def encode_step(step: int, metrics: dict[str, float], created_at: int) -> dict[str, str]:
    """A stream record: one JSON field, so the SSE route forwards it without re-encoding each metric."""
    return {"data": json.dumps({"step": step, "metrics": metrics, "created_at": created_at})}


def decode_step(fields: dict[bytes, bytes]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(fields[b"data"])
    return decoded
