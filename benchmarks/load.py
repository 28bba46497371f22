"""Load on one `uvicorn app.main:app` process (1 worker) on PostgreSQL + Redis, from a bounded async client.

Scenarios (loopback only, every request with a timeout, at most 500 in flight):
  status   GET /v1/fine_tuning/jobs/{id} at --rate req/s for --duration-s, --runs times; before every run
           the key's last_used_at is set 2 minutes back, so each run starts as a key idle for a minute
           would (the trigger of the wedge measured on main)
  listing  GET /v1/fine_tuning/jobs?limit=20, the same way
  sse      --subscribers SSE clients on a running job while metrics are appended to its Redis stream at
           5 records/s (each carries its send time: delivery latency = receive time - send time), with
           status polling at 50 req/s alongside ("other requests unaffected")
  history  the same on a job with HISTORY steps already in its stream and the DB, right after `sse`: half
           the clients load the JSON series and subscribe after its last step (as the job page does), half
           subscribe bare (as `sppo jobs watch` does); its delivery p99 against the fresh stream's
  overload 3 x --rate for 5 s: the answers past the ceiling must be 503/429, and the API must answer
           normally within a second after (never a wedge)

    python -m benchmarks.load                          # AFTER: this checkout
    python -m benchmarks.load --app-root /work/main --label before --runs 1 --only status

Writes (merges into) benchmarks/results/load.json under the label (`after` by default). Measure BEFORE and
AFTER back to back in one session: the machine is shared, so only figures taken together compare.
"""

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import redis
import sqlalchemy as sa

from benchmarks.loadgen import burst, client, subscribe
from cli.stack import stop
from core.security import display_prefix, generate_api_key, hash_api_key

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("SPPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SENT_AT = "bench/sent_at"
STREAM_KEYS = 4
HISTORY = 1000
# A history record as big as a real step's (two dozen metrics), so a replay costs what it would.
HISTORY_METRICS = [f"{group}/metric_{i}" for group in ("train", "rollout", "perf", "eval") for i in range(6)]
METHOD = {
    "type": "reinforcement",
    "reinforcement": {
        "grader": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                   "reference": "{{item.answer}}", "operation": "eq"},
        "hyperparameters": {},
    },
}  # fmt: skip


@contextmanager
def database() -> Iterator[str]:
    name = f"sppo_load_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class ApiServer(NamedTuple):
    base_url: str
    pid: int  # uvicorn's process (with several workers, their parent)


@contextmanager
def api_server(
    app_root: Path, db_url: str, redis_url: str, port: int, workers: int = 1
) -> Iterator[ApiServer]:
    """`alembic upgrade head`, then `uvicorn app.main:app` with `workers` processes from `app_root` (with
    several, the HTTP metrics in prometheus-client's multiprocess mode, as `sppo serve` sets it up)."""
    data_dir = Path(tempfile.mkdtemp(prefix="sppo-load-"))
    env = {**os.environ, "PYTHONPATH": str(app_root), "SPPO_DATA_DIR": str(data_dir),
           "SPPO_DATABASE_URL": db_url, "SPPO_REDIS_URL": redis_url}  # fmt: skip
    if workers > 1:
        (data_dir / "prometheus").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(data_dir / "prometheus")
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=app_root, env=env, check=True)
    log = (data_dir / "api.log").open("wb")
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "warning",
               "--workers", str(workers)]  # fmt: skip
    process = subprocess.Popen(command, cwd=app_root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield ApiServer(base_url, process.pid)
    finally:
        stop(process, 15)


def seed(db_url: str, extra_keys: int = 0) -> tuple[str, str, tuple[str, str], tuple[str, ...]]:
    """A tenant, its key, `extra_keys` more keys and its running jobs (the first two: for the `sse` and
    `history` scenarios), written with plain SQL so any checkout's schema takes them."""
    key = generate_api_key()
    extra = tuple(generate_api_key() for _ in range(extra_keys))
    ids = {"tenant": f"tenant-{secrets.token_hex(8)}", "key": f"key-{secrets.token_hex(8)}",
           "job": f"ftjob-{secrets.token_hex(12)}", "history": f"ftjob-{secrets.token_hex(12)}"}  # fmt: skip
    stamp = int(time.time())
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES (:id, 'load', :t)"),
                     {"id": ids["tenant"], "t": stamp})  # fmt: skip
        key_ids = [ids["key"], *(f"key-{secrets.token_hex(8)}" for _ in extra)]
        for key_id, plaintext in zip(key_ids, (key, *extra), strict=True):
            conn.execute(
                sa.text("INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at) "
                        "VALUES (:id, :tenant, :hash, :prefix, :t)"),
                {"id": key_id, "tenant": ids["tenant"], "hash": hash_api_key(plaintext),
                 "prefix": display_prefix(plaintext), "t": stamp},
            )  # fmt: skip
        for i in range(25):  # a page of listing plus one
            conn.execute(
                sa.text("INSERT INTO jobs (id, tenant_id, model, training_file, status, attempt, "
                        "max_attempts, current_step, result_files, method, hyperparameters, seed, "
                        "created_at, updated_at) VALUES (:id, :tenant, 'sppo-tiny', 'file-x', 'running', "
                        "1, 3, 0, '[]', :method, '{}', 1, :t, :t)"),
                {"id": [ids["job"], ids["history"]][i] if i < 2 else f"ftjob-{secrets.token_hex(12)}",
                 "tenant": ids["tenant"], "method": json.dumps(METHOD), "t": stamp - i},
            )  # fmt: skip
    engine.dispose()
    return key, ids["key"], (ids["job"], ids["history"]), extra


def seed_history(db_url: str, redis_url: str, job_id: str, steps: int) -> None:
    """Steps 1..`steps` of a job as the worker leaves them: metric points in the DB, records in Redis."""
    stamp = int(time.time())
    records = [
        {"step": step, "metrics": {name: step / (i + 1) for i, name in enumerate(HISTORY_METRICS)},
         "created_at": stamp}
        for step in range(1, steps + 1)
    ]  # fmt: skip
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO metric_points (job_id, step, metrics, created_at) "
                    "VALUES (:job, :step, :metrics, :t)"),
            [{"job": job_id, "step": r["step"], "metrics": json.dumps(r["metrics"]), "t": stamp}
             for r in records],
        )  # fmt: skip
    engine.dispose()
    pipe = redis.Redis.from_url(redis_url).pipeline()
    for record in records:
        pipe.xadd(f"sppo:jobs:{job_id}:metrics", {"data": json.dumps(record)}, maxlen=10_000)
    pipe.execute()


def make_idle(db_url: str, key_id: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE api_keys SET last_used_at = :t WHERE id = :id"),
                     {"t": int(time.time()) - 120, "id": key_id})  # fmt: skip
    engine.dispose()


async def publish(
    redis_url: str, job_id: str, *, duration_s: float, per_s: float, first_step: int = 0
) -> int:
    import redis.asyncio as aioredis

    client_ = aioredis.Redis.from_url(redis_url)
    sent = 0
    try:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            record = {
                "step": first_step + sent,
                "metrics": {SENT_AT: time.time()},
                "created_at": int(time.time()),
            }
            await client_.xadd(f"sppo:jobs:{job_id}:metrics", {"data": json.dumps(record)}, maxlen=10_000)
            sent += 1
            await asyncio.sleep(1 / per_s)
    finally:
        await client_.aclose()
    return sent


async def after_wedge_check(base_url: str, key: str, job_id: str) -> dict[str, Any]:
    """One second after the load stops: /health and a normal request must answer within a second."""
    await asyncio.sleep(1)
    out: dict[str, Any] = {}
    async with client(base_url, key, max_connections=2, timeout_s=1) as http:
        for name, path in (("health", "/health"), ("status", f"/v1/fine_tuning/jobs/{job_id}")):
            started = time.perf_counter()
            try:
                response = await http.get(path)
                out[name] = {
                    "status": response.status_code,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
            except httpx.HTTPError as exc:
                out[name] = {"status": type(exc).__name__}
    return out


async def live_delivery(
    args: argparse.Namespace,
    base_url: str,
    http: httpx.AsyncClient,
    job_id: str,
    keys: tuple[str, ...],
    *,
    first_step: int = 0,
    history: bool = False,
) -> dict[str, Any]:
    """--subscribers SSE clients on the job (with `history`: half as the job page, half bare) while it
    publishes 5 steps/s for 10 s, and status polls at 50 req/s alongside."""
    stream_path = f"/v1/fine_tuning/jobs/{job_id}/metrics/stream"
    series_path = f"/v1/fine_tuning/jobs/{job_id}/metrics?limit=10000"
    groups = [(args.subscribers // 2, series_path), (args.subscribers - args.subscribers // 2, None)]
    async with client(base_url, None, max_connections=args.subscribers, timeout_s=30) as streams:
        tasks = [
            asyncio.create_task(
                subscribe(streams, stream_path, subscribers=n, duration_s=14, sent_at_key=SENT_AT, keys=keys,
                          series_path=series)
            )
            for n, series in (groups if history else [(args.subscribers, None)])
        ]  # fmt: skip
        await asyncio.sleep(3)  # every client connected and caught up
        publisher = asyncio.create_task(
            publish(args.redis_url, job_id, duration_s=10, per_s=5, first_step=first_step)
        )
        polls = await burst(http, f"/v1/fine_tuning/jobs/{job_id}", rate=50, duration_s=10)
        published = await publisher
        results = [await task for task in tasks]
    out = {**sum(results[1:], results[0]).summary(), "published": published, "status_polls": polls.summary()}
    if history:
        out["page_clients"], out["bare_clients"] = (result.summary() for result in results)
    return out


async def scenarios(args: argparse.Namespace, base_url: str, db_url: str, redis_url: str) -> dict[str, Any]:
    # SSE subscribers share STREAM_KEYS keys: one key may hold only SPPO_RATE_LIMIT_STREAMS (32) streams;
    # the history case has keys of its own, so streams of the sse case still closing do not count.
    key, key_id, (job_id, history_job), extra_keys = seed(db_url, extra_keys=2 * STREAM_KEYS)
    if "history" in args.only:
        seed_history(db_url, redis_url, history_job, HISTORY)
    out: dict[str, Any] = {}
    paths = {"status": f"/v1/fine_tuning/jobs/{job_id}", "listing": "/v1/fine_tuning/jobs?limit=20"}
    async with client(base_url, key, max_connections=500, timeout_s=args.timeout_s) as http:
        for name, path in paths.items():
            if name not in args.only:
                continue
            runs = []
            for _ in range(args.runs):
                make_idle(db_url, key_id)
                result = await burst(http, path, rate=args.rate, duration_s=args.duration_s)
                runs.append({**result.summary(), "after": await after_wedge_check(base_url, key, job_id)})
                print(name, json.dumps(runs[-1]))
            out[name] = runs
        if "sse" in args.only:
            out["sse"] = await live_delivery(args, base_url, http, job_id, extra_keys[:STREAM_KEYS])
            print("sse", json.dumps(out["sse"]))
        if "history" in args.only:
            out["history"] = await live_delivery(
                args,
                base_url,
                http,
                history_job,
                extra_keys[STREAM_KEYS:],
                first_step=HISTORY + 1,
                history=True,
            )
            fresh_p99 = out.get("sse", {}).get("delivery_p99_ms")
            if fresh_p99 and out["history"]["delivery_p99_ms"] is not None:
                out["history"]["p99_vs_fresh"] = round(out["history"]["delivery_p99_ms"] / fresh_p99, 2)
            print("history", json.dumps(out["history"]))
        if "overload" in args.only:
            result = await burst(
                http, paths["status"], rate=3 * args.rate, duration_s=5, ok_statuses=(200, 429, 503)
            )
            summary = result.summary()
            summary["after"] = await after_wedge_check(base_url, key, job_id)
            out["overload"] = summary
            print("overload", json.dumps(summary))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--app-root", type=Path, default=ROOT, help="checkout whose app.main:app is served")
    parser.add_argument("--label", default="after")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="per-request client timeout")
    parser.add_argument("--only", default="status,listing,sse,history,overload")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes (as deployed)")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    redis.Redis.from_url(args.redis_url).flushdb()
    with (
        database() as db_url,
        api_server(args.app_root.resolve(), db_url, args.redis_url, args.port, args.api_workers) as server,
    ):
        figures = asyncio.run(scenarios(args, server.base_url, db_url, args.redis_url))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = {
        "app_root": str(args.app_root),
        "uvicorn_workers": args.api_workers,
        "database": "postgresql",
        "rate_req_s": args.rate,
        "duration_s": args.duration_s,
        "client_timeout_s": args.timeout_s,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **figures,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS} [{args.label}]")


if __name__ == "__main__":
    main()
