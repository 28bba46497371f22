"""A real `sppo worker` with JSON logs: every line parses, a task's lines carry its job id, and the
container healthcheck sees the worker's presence while it runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from celery import Celery

from core.db import upgrade_database
from core.presence import workers_key
from core.queues import TRAIN_TASK, broker_options

QUEUE = "log-test"  # its own queue: the shared test Redis also holds other tests' `training` messages


def test_worker_lines_are_json_and_carry_the_job_id(redis_url: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'sppo.db'}"  # one backend is enough: this is about the log lines
    upgrade_database(db_url)
    env = {
        **os.environ,
        "SPPO_DATA_DIR": str(tmp_path),
        "SPPO_DATABASE_URL": db_url,
        "SPPO_REDIS_URL": redis_url,
        "SPPO_LOG_FORMAT": "json",
        "SPPO_DEVICE": "cpu",
        "SPPO_HEARTBEAT_INTERVAL_S": "0.5",
        "SPPO_HEARTBEAT_LEASE_S": "5",
    }
    log = tmp_path / "worker.log"
    probe = [sys.executable, "-m", "worker.healthcheck"]  # the worker image's HEALTHCHECK
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "sppo"), "worker", "--queues", QUEUE],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert redis.Redis.from_url(redis_url).hlen(workers_key()) >= 1  # its presence, for /metrics
        assert subprocess.run(probe, env=env, check=False).returncode == 0
        Celery(broker=redis_url, broker_transport_options=broker_options()).send_task(
            TRAIN_TASK, args=["ftjob-not-there"], queue=QUEUE
        )
        while "dropped" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert subprocess.run(probe, env=env, check=False).returncode == 1  # it removed its presence on exit
    text = [line for line in log.read_text().splitlines() if line.strip()]
    # Celery's signal handler prints this one notice to the terminal itself, past any logging set-up.
    lines = [json.loads(line) for line in text if line != "worker: Warm shutdown (MainProcess)"]
    assert len(lines) >= len(text) - 1
    task_lines = [line for line in lines if "ftjob-not-there" in line["event"]]
    assert len(task_lines) >= 2, task_lines  # the drop, and the task's outcome
    assert all(line["job_id"] == "ftjob-not-there" and line["level"] == "info" for line in task_lines)
    assert not [
        line for line in lines if "ready." in line["event"] and "job_id" in line
    ]  # ids end with the task
