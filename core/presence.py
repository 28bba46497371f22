"""Worker presence in Redis: each worker process writes what it is doing every heartbeat; the API's
`/metrics` reads it, so worker-side series survive the worker process and need no scrape of the worker.

One hash (`<prefix>:workers`), field = worker id, value = JSON {last_seen, device, task, task_id,
gpu_memory_*}. Entries of workers silent for a day are dropped when read (a worker that stopped recently
stays visible, with its age).
"""

import json
import time
from typing import Any, cast

import redis

from core.queues import redis_key

FORGET_AFTER_S = 24 * 3600


def workers_key() -> str:
    return redis_key("workers")


def record_presence(client: "redis.Redis", worker_id: str, **state: Any) -> None:
    client.hset(workers_key(), worker_id, json.dumps({"last_seen": time.time(), **state}))


def forget_presence(client: "redis.Redis", worker_id: str) -> None:
    client.hdel(workers_key(), worker_id)


def read_presence(client: "redis.Redis") -> dict[str, dict[str, Any]]:
    """Every worker seen in the last day, by id."""
    raw = cast(dict[bytes, bytes], client.hgetall(workers_key()))
    workers: dict[str, dict[str, Any]] = {}
    stale: list[bytes] = []
    for worker_id, value in raw.items():
        state = json.loads(value)
        if time.time() - float(state["last_seen"]) > FORGET_AFTER_S:
            stale.append(worker_id)
        else:
            workers[worker_id.decode()] = state
    if stale:
        client.hdel(workers_key(), *stale)
    return workers
