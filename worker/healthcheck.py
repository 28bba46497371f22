"""`python -m worker.healthcheck`: the container's health probe. Exit 0 while a worker process of this
host (container) has recorded its presence in Redis within three heartbeat intervals, else 1."""

import socket
import sys
import time

import redis

from core.presence import read_presence
from core.settings import get_settings


def healthy() -> bool:
    settings = get_settings()
    client = redis.Redis.from_url(str(settings.redis_url), socket_connect_timeout=2, socket_timeout=5)
    prefix = f"{socket.gethostname()}:"  # worker ids are host:pid (worker.jobs.worker_identity)
    fresh_after = time.time() - 3 * settings.heartbeat_interval_s
    return any(
        worker_id.startswith(prefix) and float(state["last_seen"]) >= fresh_after
        for worker_id, state in read_presence(client).items()
    )


if __name__ == "__main__":
    try:
        sys.exit(0 if healthy() else 1)
    except redis.RedisError as exc:
        sys.exit(f"unhealthy: Redis unreachable ({type(exc).__name__})")
