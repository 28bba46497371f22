"""Soak under faults: jobs on a whole local stack while workers, Redis, the API and DB connections are killed.

Everything runs on loopback and is bounded: its own redis-server (another port, no persistence, so a
kill empties it, as a restart without AOF does), its own PostgreSQL database on the test server, one
uvicorn API, `--workers` Celery workers (lease 6 s, heartbeat 1 s, reaper every 1 s), a temp data dir.
Every `--fault-every-s` one fault is dealt from a shuffled deck of the four kinds (reshuffled when
empty, so a short soak still meets each): SIGKILL a worker (restarted at once), SIGKILL redis-server
(restarted empty), SIGKILL the API (restarted), or pg_terminate_backend on every worker connection.
The soak ends when every job is finished or after `--budget-s`.

Recorded per fault: the time until the work it hit moved again (a killed worker's job running on a worker,
otherwise any job's next recorded step). Per job: status, steps recorded vs expected, lost and duplicated
steps (metric rows are unique per (job, step), so a duplicate would have to be a repeated step number),
its attempt and worker losses (a loss after a new checkpoint costs no attempt).

    python benchmarks/chaos.py                          # 20 jobs of 100 steps, 2 workers, faults every 5 s
    python benchmarks/chaos.py --jobs 4 --budget-s 600  # a reduced run

Writes benchmarks/results/chaos.json.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from app.services.keys import create_key
from core.db import session_scope, upgrade_database
from core.models import Job, MetricPoint
from worker.engine.fixtures import FIXTURE_GRADER, ensure_fixture

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"
POSTGRES_URL = os.environ.get("SPPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORKER_APP = "sppo-soak-worker"
FAULTS = ("kill_worker", "kill_redis", "kill_api", "drop_db_connections")
FINISHED = {"succeeded", "failed", "cancelled"}
TERMINATE = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.redis_port, self.api_port = free_port(), free_port()
        self.db_url = self._create_database()
        self.env = {
            **os.environ,
            "SPPO_DATA_DIR": str(root / "data"),
            "SPPO_DATABASE_URL": self.db_url,
            "SPPO_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SPPO_HEARTBEAT_INTERVAL_S": "1",
            "SPPO_HEARTBEAT_LEASE_S": "6",
            "SPPO_REAPER_INTERVAL_S": "1",
            "SPPO_MAX_CONCURRENT_JOBS_PER_TENANT": str(args.jobs),
            "SPPO_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
        }
        self.redis: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started = time.monotonic()
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)

    def _create_database(self) -> str:
        name = f"sppo_soak_{os.getpid()}"
        engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        upgrade_database(url)
        return url

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def start_redis(self) -> None:
        self.redis = self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind",
                                           "127.0.0.1", "--save", "", "--appendonly", "no"])  # fmt: skip
        self._wait(lambda: socket.create_connection(("127.0.0.1", self.redis_port), timeout=1).close())

    def start_api(self) -> None:
        self.api = self._spawn("api", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                       "--port", str(self.api_port),
                                       "--http", "app.http_protocol:HeadTimeoutProtocol"])  # fmt: skip
        self._wait(lambda: httpx.get(f"{self.base_url}/health", timeout=1).raise_for_status())

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        env = {**self.env, "PGAPPNAME": WORKER_APP}
        with (self.logs / f"worker-{index}.log").open("ab") as out:
            process = subprocess.Popen([str(Path(sys.executable).parent / "sppo"), "worker"],
                                       cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        return process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @staticmethod
    def _wait(probe: Any, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def jobs(self) -> list[tuple[str, str, str | None, int]]:
        with session_scope(self.db_url) as session:
            rows = session.execute(sa.select(Job.id, Job.status, Job.worker_id, Job.current_step)).all()
        return [tuple(row) for row in rows]  # type: ignore[misc]

    def steps_recorded(self) -> int:
        with session_scope(self.db_url) as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(MetricPoint)) or 0)

    def inject(self, fault: str) -> dict[str, Any]:
        record: dict[str, Any] = {"fault": fault, "at_s": round(time.monotonic() - self.started, 1)}
        before = self.steps_recorded()
        killed = time.monotonic()
        if fault == "kill_worker":
            index = random.randrange(len(self.workers))
            victim = self.workers[index]
            held = [
                j
                for j, status, w, _ in self.jobs()
                if status == "running" and w and w.endswith(f":{victim.pid}")
            ]
            victim.kill()
            victim.wait()
            self.workers[index] = self.start_worker(index)
            record["job"] = held[0] if held else None
        elif fault == "kill_redis" and self.redis is not None:
            self.redis.kill()
            self.redis.wait()
            self.start_redis()
        elif fault == "kill_api" and self.api is not None:
            self.api.kill()
            self.api.wait()
            self.start_api()
        elif fault == "drop_db_connections":
            engine = sa.create_engine(self.db_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
            with engine.connect() as conn:
                ended = conn.execute(sa.text(TERMINATE), {"app": WORKER_APP}).scalar_one()
                record["connections"] = int(ended)
            engine.dispose()
        record["recovery_s"] = self._recovery(record.get("job"), before, killed)
        return record

    def _recovery(self, job_id: str | None, steps_before: int, since: float) -> float | None:
        """Seconds until the hit job runs on a live worker again, else until any new step is recorded."""
        deadline = since + self.args.recovery_timeout_s
        while time.monotonic() < deadline:
            rows = {j: (status, w) for j, status, w, _ in self.jobs()}
            if job_id is not None:
                status, worker = rows.get(job_id, ("", None))
                alive = {f":{w.pid}" for w in self.workers}
                if status in FINISHED or (
                    status == "running" and worker and any(worker.endswith(a) for a in alive)
                ):
                    return round(time.monotonic() - since, 1)
            elif self.steps_recorded() > steps_before or all(s in FINISHED for s, _ in rows.values()):
                return round(time.monotonic() - since, 1)
            time.sleep(0.25)
        return None

    def stop(self) -> None:
        for process in [*self.workers, self.api, self.redis]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(self.db_url).database}" WITH (FORCE)')
            )
        engine.dispose()


def submit(soak: Soak, count: int, steps: int) -> dict[str, int]:
    fixture = ensure_fixture()
    with session_scope(soak.db_url) as session:
        key = create_key(session, tenant_name="soak").plaintext
    lines = fixture.train_file.read_bytes().splitlines(keepends=True)[: 8 * steps]
    client = httpx.Client(base_url=soak.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    file_id = client.post("/v1/files", data={"purpose": "fine-tune"},
                          files={"file": ("train.jsonl", b"".join(lines))}).json()["id"]  # fmt: skip
    hyper = {"n_epochs": 1, "batch_size": 8, "eval_interval": 100, "checkpoint_interval": 2}
    reinforcement = {"algorithm": "sppo", "grader": FIXTURE_GRADER, "hyperparameters": hyper}
    method = {"type": "reinforcement", "reinforcement": reinforcement}
    expected = {}
    for seed in range(count):
        body = {"model": "sppo-tiny", "training_file": file_id, "method": method, "seed": seed}
        response = client.post("/v1/fine_tuning/jobs", json=body)
        response.raise_for_status()
        expected[response.json()["id"]] = steps
    return expected


def outcome(soak: Soak, expected: dict[str, int]) -> dict[str, Any]:
    with session_scope(soak.db_url) as session:
        status = dict(session.execute(sa.select(Job.id, Job.status)).all())
        errors = dict(session.execute(sa.select(Job.id, Job.error_code)).all())
        counts = session.execute(sa.select(Job.id, Job.attempt, Job.worker_losses))
        retries = {job_id: (attempt, losses) for job_id, attempt, losses in counts}
        points = session.execute(sa.select(MetricPoint.job_id, MetricPoint.step)).all()
    per_job = {}
    for job_id, steps in expected.items():
        recorded = [s for j, s in points if j == job_id]
        per_job[job_id] = {
            "status": status[job_id],
            "error_code": errors[job_id],
            "attempt": retries[job_id][0],  # a lost worker costs one only when no new checkpoint was made
            "worker_losses": retries[job_id][1],
            "lost_steps": len(set(range(1, steps + 1)) - set(recorded))
            if status[job_id] == "succeeded"
            else None,
            "duplicated_steps": len(recorded) - len(set(recorded)),
        }
    return per_job


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    # long enough that faults land while jobs run: 20 jobs of 4 steps finish in 14 s on a quiet machine
    parser.add_argument("--steps", type=int, default=100, help="steps per job (batch 8, checkpoint every 2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-every-s", type=float, default=5.0)
    parser.add_argument("--budget-s", type=float, default=1800.0, help="the soak stops after this long")
    parser.add_argument("--recovery-timeout-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="full", help="recorded with the results (e.g. reduced)")
    args = parser.parse_args()
    random.seed(args.seed)
    root = Path(tempfile.mkdtemp(prefix="sppo-soak-"))
    soak = Soak(args, root)
    faults: list[dict[str, Any]] = []
    try:
        soak.start_redis()
        soak.start_api()
        soak.workers = [soak.start_worker(i) for i in range(args.workers)]
        soak.started = time.monotonic()
        expected = submit(soak, args.jobs, args.steps)
        next_fault = time.monotonic() + args.fault_every_s
        deck: list[str] = []
        while time.monotonic() - soak.started < args.budget_s:
            if all(status in FINISHED for _, status, _, _ in soak.jobs()):
                break
            if time.monotonic() >= next_fault:
                deck = deck or random.sample(FAULTS, len(FAULTS))
                faults.append(soak.inject(deck.pop()))
                print(json.dumps(faults[-1]), flush=True)
                next_fault = time.monotonic() + args.fault_every_s
            time.sleep(0.5)
        elapsed = time.monotonic() - soak.started
        per_job = outcome(soak, expected)
    finally:
        soak.stop()
        shutil.rmtree(root, ignore_errors=True)
    recoveries = [f["recovery_s"] for f in faults if f["recovery_s"] is not None]
    summary = {
        "submitted": len(expected),
        "succeeded": sum(j["status"] == "succeeded" for j in per_job.values()),
        "failed": sum(j["status"] == "failed" for j in per_job.values()),
        "unfinished": sum(j["status"] not in FINISHED for j in per_job.values()),
        "lost_steps": sum(j["lost_steps"] or 0 for j in per_job.values()),
        "duplicated_steps": sum(j["duplicated_steps"] for j in per_job.values()),
        "worker_losses": sum(j["worker_losses"] for j in per_job.values()),
        "faults": {kind: sum(f["fault"] == kind for f in faults) for kind in FAULTS},
        "recovery_s_max": max(recoveries, default=None),
        "recovery_s_mean": round(sum(recoveries) / len(recoveries), 1) if recoveries else None,
        "recoveries_timed_out": sum(f["recovery_s"] is None for f in faults),
        "elapsed_s": round(elapsed, 1),
    }
    result = {
        "label": args.label,
        "config": vars(args),
        "summary": summary,
        "faults": faults,
        "jobs": per_job,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
