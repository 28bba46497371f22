"""Worker presence in Redis: each worker process writes what it is doing every heartbeat; the API's
`/metrics` reads it, so worker-side series survive the worker process and need no scrape of the worker.

One hash, field = worker id, value = JSON {last_seen, device, job_id, gpu_memory_*}. Entries of workers
silent for a day are dropped when read (a worker that stopped recently stays visible, with its age).
"""

import json
import time
from typing import Any, cast

import redis

WORKERS_KEY = "sppo:workers"
FORGET_AFTER_S = 24 * 3600


def record_presence(client: "redis.Redis", worker_id: str, **state: Any) -> None:
    client.hset(WORKERS_KEY, worker_id, json.dumps({"last_seen": time.time(), **state}))


def forget_presence(client: "redis.Redis", worker_id: str) -> None:
    client.hdel(WORKERS_KEY, worker_id)


def read_presence(client: "redis.Redis") -> dict[str, dict[str, Any]]:
    """Every worker seen in the last day, by id."""
    raw = cast(dict[bytes, bytes], client.hgetall(WORKERS_KEY))
    workers: dict[str, dict[str, Any]] = {}
    stale: list[bytes] = []
    for worker_id, value in raw.items():
        state = json.loads(value)
        if time.time() - float(state["last_seen"]) > FORGET_AFTER_S:
            stale.append(worker_id)
        else:
            workers[worker_id.decode()] = state
    if stale:
        client.hdel(WORKERS_KEY, *stale)
    return workers
