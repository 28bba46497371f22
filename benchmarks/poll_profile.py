"""Where a status poll's (or a listing's) server CPU goes: cProfile of this checkout's API, in process.

The API runs as `uvicorn app.main:app` would (uvicorn's Server, the same protocol and loop), but inside this
process with cProfile on the event loop's thread and on each worker thread while it runs a sync route or
a key check (cProfile sees one thread at a time: both are merged). Sequential GETs come from a client
thread that is not profiled. Tottime and cumtime are under the profiler's own overhead, which inflates
small calls: read them as shares, and measure the costs with benchmarks/poll_cost.py.

    python -m benchmarks.poll_profile status --requests 2000 --top 40
"""

import argparse
import asyncio
import cProfile
import functools
import logging
import os
import pstats
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import redis

from benchmarks.load import database, seed
from benchmarks.poll_cost import seed_events

_thread_profiles: dict[int, cProfile.Profile] = {}


def profiled_run_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    """anyio's `to_thread.run_sync`, with the function profiled in the worker thread that runs it."""

    def in_thread(func: Callable[..., Any], *args: Any) -> Any:
        profile = _thread_profiles.setdefault(threading.get_ident(), cProfile.Profile(time.thread_time))
        profile.enable()
        try:
            return func(*args)
        finally:
            profile.disable()

    @functools.wraps(original)
    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await original(functools.partial(in_thread, func), *args, **kwargs)

    return run_sync


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", choices=("status", "listing", "events"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, help="also write the merged stats here (pstats format)")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis_url).flushdb()
    with database() as db_url:
        env = {**os.environ, "SPPO_DATABASE_URL": db_url}
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], env=env, check=True)
        key, _, (job_id, _), _ = seed(db_url)
        seed_events(db_url, job_id)
        os.environ.update({"SPPO_DATABASE_URL": db_url, "SPPO_REDIS_URL": args.redis_url})
        profile(args, key, job_id)


def profile(args: argparse.Namespace, key: str, job_id: str) -> None:
    import uvicorn

    anyio.to_thread.run_sync = profiled_run_sync(anyio.to_thread.run_sync)  # type: ignore[assignment]
    from app.main import app

    logging.getLogger("httpx").setLevel(logging.WARNING)  # the client's own lines: not the server's cost

    path = {
        "status": f"/v1/fine_tuning/jobs/{job_id}",
        "listing": "/v1/fine_tuning/jobs?limit=20",
        "events": f"/v1/fine_tuning/jobs/{job_id}/events?limit=20",
    }[args.path]
    config = uvicorn.Config(app, port=args.port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    loop_profile = cProfile.Profile(time.thread_time)
    loops: list[asyncio.AbstractEventLoop] = []
    wall: list[float] = []

    def drive() -> None:
        while not server.started:
            time.sleep(0.05)
        loop = loops[0]
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", headers=headers) as http:
            for _ in range(100):
                http.get(path).raise_for_status()
            _thread_profiles.clear()
            # cProfile hooks the thread that enables it: the loop's own thread must call enable.
            loop.call_soon_threadsafe(loop_profile.enable)
            started = time.perf_counter()
            for _ in range(args.requests):
                http.get(path).raise_for_status()
            wall.append(time.perf_counter() - started)
            loop.call_soon_threadsafe(loop_profile.disable)
        server.should_exit = True

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    driver = threading.Thread(target=drive)
    driver.start()
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    driver.join()
    stats = pstats.Stats(loop_profile)
    for thread_profile in _thread_profiles.values():
        stats.add(thread_profile)
    if args.out:
        stats.dump_stats(args.out)
    print(f"{args.requests} x {path}: {wall[0] * 1000 / args.requests:.2f} ms wall per request (profiled)")
    stats.sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
