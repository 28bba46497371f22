"""Server CPU per request of the poll path: job status, job listing and events list, sequential.

Each tree given (`label=path`) is served by its own `uvicorn app.main:app` (1 process by default, as
benchmarks/load.py starts it) on its own PostgreSQL database, with the same Redis. Then, in rounds, each
server in turn answers `--requests` sequential GETs of each path over one kept-alive connection, and the
CPU time its process (and any worker processes under it) used meanwhile is read from /proc (utime +
stime) and divided by the requests. The per-key request limits are raised out of reach (each request is
still counted in Redis, as always), so a long run is never answered 429. The order of the servers is
reversed from round to round, so on a shared machine all see the same background load; compare trees
only within one run (the medians and each tree's ratio to every tree before it are written).

    python -m benchmarks.poll_cost main=/work/poll-base candidate=.   # label=tree, as many as wanted

Writes (merges into) benchmarks/results/poll_cost.json under `--label`.
"""

import argparse
import json
import os
import platform
import secrets
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from benchmarks.load import api_server, database, seed

RESULTS = Path(__file__).resolve().parent / "results" / "poll_cost.json"
EVENTS = 25  # a page of events plus some
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of `pid` and of every process under it, as /proc counts them."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime (fields 14 and 15)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(cpu_s(int(child)) for child in children)


def seed_events(db_url: str, job_id: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO job_events (id, job_id, created_at, level, type, message, data) "
                    "VALUES (:id, :job, :t, 'info', 'metrics', :message, :data)"),
            [{"id": f"ftevent-{secrets.token_hex(12)}", "job": job_id, "t": int(time.time()),
              "message": f"Step {step}/100: reward 0.5", "data": json.dumps({"step": step, "reward": 0.5})}
             for step in range(1, EVENTS + 1)],
        )  # fmt: skip
    engine.dispose()


def measure(http: httpx.Client, pid: int, path: str, requests: int, warmup: int) -> dict[str, Any]:
    """`requests` sequential GETs after `warmup` more; every answer must be a 200."""
    for _ in range(warmup):
        http.get(path).raise_for_status()
    statuses: dict[int, int] = {}
    cpu_before, wall_before = cpu_s(pid), time.perf_counter()
    for _ in range(requests):
        status = http.get(path).status_code
        statuses[status] = statuses.get(status, 0) + 1
    cpu_used, wall = cpu_s(pid) - cpu_before, time.perf_counter() - wall_before
    if set(statuses) != {200}:
        raise RuntimeError(f"{path}: answers {statuses}")
    return {
        "server_cpu_ms_per_request": round(cpu_used * 1000 / requests, 3),
        "wall_ms_per_request": round(wall * 1000 / requests, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = dict(tree.split("=", 1) for tree in args.trees)
    os.environ.update(
        {"SPPO_RATE_LIMIT_REQUESTS_PER_SECOND": "1000000", "SPPO_RATE_LIMIT_REQUESTS_PER_MINUTE": "100000000"}
    )
    redis.Redis.from_url(args.redis_url).flushdb()
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {label: {} for label in trees}
    with ExitStack() as stack:
        clients: dict[str, tuple[httpx.Client, int, dict[str, str]]] = {}
        for i, (label, tree) in enumerate(trees.items()):
            db_url = stack.enter_context(database())
            server = stack.enter_context(
                api_server(Path(tree).resolve(), db_url, args.redis_url, args.port + i, args.api_workers)
            )
            key, _, (job_id, _), _ = seed(db_url)
            seed_events(db_url, job_id)
            paths = {
                "status": f"/v1/fine_tuning/jobs/{job_id}",
                "listing": "/v1/fine_tuning/jobs?limit=20",
                "events": f"/v1/fine_tuning/jobs/{job_id}/events?limit=20",
            }
            http = stack.enter_context(
                httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            )
            clients[label] = (http, server.pid, paths)
        for round_ in range(args.rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for label in order:
                http, pid, paths = clients[label]
                for name, path in paths.items():
                    result = measure(http, pid, path, args.requests, args.warmup)
                    figures[label].setdefault(name, []).append(result)
                    print(round_, label, name, json.dumps(result), flush=True)
    summary: dict[str, Any] = {}
    for label, by_path in figures.items():
        summary[label] = {
            "tree": trees[label],
            **{
                name: {
                    "server_cpu_ms_per_request_median": round(
                        statistics.median(r["server_cpu_ms_per_request"] for r in runs), 3
                    ),
                    "rounds": runs,
                }
                for name, runs in by_path.items()
            },
        }
    labels = list(trees)
    for i, label in enumerate(labels):
        for earlier in labels[:i]:
            summary[label]["vs_" + earlier] = {
                name: round(
                    summary[label][name]["server_cpu_ms_per_request_median"]
                    / summary[earlier][name]["server_cpu_ms_per_request_median"],
                    2,
                )
                for name in figures[label]
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="+", help="label=path of a checkout whose app.main:app is served")
    parser.add_argument("--label", default="latest", help="the run's name in the results file")
    parser.add_argument("--requests", type=int, default=1000, help="per path, server and round")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--port", type=int, default=8781)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    load_before = os.getloadavg()
    summary = run(args)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = {
        "requests_per_round": args.requests,
        "uvicorn_workers": args.api_workers,
        "database": "postgresql",
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_before,
            "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    ratios = {label: {k: v for k, v in row.items() if k.startswith("vs_")} for label, row in summary.items()}
    print(json.dumps(ratios))
    print(f"wrote {RESULTS} [{args.label}]")


if __name__ == "__main__":
    main()
