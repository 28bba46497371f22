"""A 2-device job through the whole service: the API routes it to the 2-device worker only, which runs it
on two torchrun ranks; rank 0's reports reach the DB and the metrics stream once per step. A SIGKILLed
worker leaves no rank behind, and its job is requeued and finished by another 2-device worker; a SIGKILLed
rank fails its job with a clear error and leaves the worker serving."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.db import session_scope
from core.models import Job
from tests.e2e.conftest import Stack, jsonl, metric_steps, sppo_method, wait_for
from worker.engine.fixtures import Fixture

pytestmark = pytest.mark.timeout(1200)

TRAIN_ITEMS, VALIDATION_ITEMS, BATCH = 16, 8, 8


def _create(api: httpx.Client, tiny: Fixture, train_items: int, **hyper: Any) -> str:
    files = [
        api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, content)}).json()["id"]
        for name, content in (
            ("train.jsonl", jsonl(tiny.train_file, 0, train_items)),
            ("valid.jsonl", jsonl(tiny.validation_file, 0, VALIDATION_ITEMS)),
        )
    ]
    response = api.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "sppo-tiny", "training_file": files[0], "validation_file": files[1], "seed": 3,
            "method": sppo_method(batch_size=BATCH, n_devices=2, eval_samples=1, **hyper),
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed")


def test_a_two_device_job_runs_on_the_two_device_worker(stack: Stack, key: str, tiny: Fixture) -> None:
    two_devices = stack.start_worker(queues="training.devices.2,evaluation", SPPO_WORKER_DEVICES="2")
    with stack.client(key) as api:
        job = wait_for(api, _create(api, tiny, TRAIN_ITEMS, eval_interval=1), _finished)
        assert job["status"] == "succeeded", job["error"]
        assert metric_steps(api, job["id"]) == [0, 1, 2]  # step 0: the base model's score; each step once
        assert job["method"]["reinforcement"]["hyperparameters"]["n_devices"] == 2
        adapter = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
        assert (
            api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{adapter['id']}/adapter").status_code
            == 200
        )
    with session_scope(stack.db_url) as session:
        worker_id = session.scalar(select(Job.worker_id).where(Job.id == job["id"]))
    assert worker_id is not None and worker_id.endswith(f":{two_devices.pid}")


def _ranks_of(job_id: str) -> list[int]:
    """pids of live processes (torchrun and its ranks) running `job_id`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"worker.engine.launch" in cmdline and job_id.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _worker_of(stack: Stack, job_id: str) -> str | None:
    with session_scope(stack.db_url) as session:
        return session.scalar(select(Job.worker_id).where(Job.id == job_id))


def test_a_killed_two_device_worker_leaves_no_rank_and_its_job_resumes_elsewhere(
    stack: Stack, key: str, tiny: Fixture
) -> None:
    for _ in range(2):  # one to kill, one to take the job over (with any left by the test above)
        stack.start_worker(queues="training.devices.2", SPPO_WORKER_DEVICES="2")
    with stack.client(key) as api:
        job_id = _create(api, tiny, 6 * BATCH, eval_interval=100, checkpoint_interval=1)
        wait_for(api, job_id, lambda j: j["status"] == "running" and j["current_step"] >= 2)
        owner = _worker_of(stack, job_id)
        victim = next(w for w in stack.workers if owner is not None and owner.endswith(f":{w.pid}"))
        assert _ranks_of(job_id)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        deadline = time.monotonic() + 60  # rank 0 notices at its next callback, torchrun stops the rest
        while _ranks_of(job_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ranks_of(job_id) == []
        job = wait_for(api, job_id, _finished)
        assert job["status"] == "succeeded", job["error"]
        assert job["worker_losses"] >= 1 and metric_steps(api, job_id) == list(range(0, 7))  # every step once
    assert _worker_of(stack, job_id) not in (None, owner)


def test_a_killed_rank_fails_the_job_cleanly_and_the_worker_goes_on(
    stack: Stack, key: str, tiny: Fixture
) -> None:
    stack.start_worker(queues="training.devices.2", SPPO_WORKER_DEVICES="2")
    with stack.client(key) as api:
        job_id = _create(api, tiny, 6 * BATCH, eval_interval=100)
        wait_for(api, job_id, lambda j: j["status"] == "running" and j["current_step"] >= 1)
        rank_one = next(pid for pid in _ranks_of(job_id) if _rank_of(pid) == 1)
        os.kill(rank_one, signal.SIGKILL)  # as the OOM killer would
        job = wait_for(api, job_id, _finished, timeout=120)
        assert job["status"] == "failed" and job["error"]["code"] == "distributed_process_failed"
        assert "stopped unexpectedly" in job["error"]["message"]
    owner = _worker_of(stack, job_id)
    worker = next(w for w in stack.workers if owner is not None and owner.endswith(f":{w.pid}"))
    assert _ranks_of(job_id) == [] and worker.poll() is None


def _rank_of(pid: int) -> int | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(item[5:]) for item in environ if item.startswith(b"RANK=")), None)
