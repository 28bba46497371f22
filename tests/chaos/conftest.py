"""Fault injection against the whole service: a stack of its own (API, workers, PostgreSQL, a Redis
database of its own), on which tests kill workers, drop database connections and empty Redis.

Every test asserts the same outcome: the work ends `succeeded` (or `failed` with a clear error once its
attempts are spent), every training step is recorded exactly once, no half-written checkpoint or adapter
is left, and it prints the recovery time (fault to work running again).
"""

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.db import session_scope
from core.models import Checkpoint, FineTunedModel
from tests.conftest import _claim_redis_database
from tests.e2e.conftest import FINISHED, Stack, api, jsonl, key, sppo_method, stack, upload, wait_for
from worker.engine.fixtures import Fixture

__all__ = ["api", "key", "stack", "upload"]  # the e2e fixtures, on the chaos stack

STEPS, CHECKPOINT_EVERY = 4, 2  # 32 items, batch 8: a checkpoint at step 2 and at the end


@pytest.fixture(scope="session")
def stack_redis_url() -> Iterator[str]:
    """Not the e2e stack's: its workers would take this stack's messages (and these tests flush it)."""
    with _claim_redis_database("the chaos stack") as url:
        yield url


def stop_workers(stack: Stack) -> None:
    """SIGKILL every worker of the stack that is still running."""
    for process in stack.workers:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def only_worker(stack: Stack, **env: str) -> subprocess.Popen[bytes]:
    """Stop every worker of the stack (SIGKILL) and start one, with `env` added to its environment."""
    stop_workers(stack)
    return stack.start_worker(**env)


@pytest.fixture
def start_job(api: httpx.Client, upload: Callable[..., str], tiny: Fixture) -> Callable[..., str]:
    def _start(steps: int = STEPS, **hyperparameters: Any) -> str:
        hyper = {"checkpoint_interval": CHECKPOINT_EVERY, "eval_interval": 100, **hyperparameters}
        response = api.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "sppo-tiny",
                "training_file": upload(jsonl(tiny.train_file, 0, 8 * steps)),
                "method": sppo_method(**hyper),
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    return _start


def wait_running_again(api: httpx.Client, job_id: str, since: float, attempt: int = 2) -> float:
    """Seconds from `since` until the job runs again (attempt `attempt` on a worker)."""
    while True:
        job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        started = [e for e in events if e["message"].startswith("Job started on worker")]
        if job["status"] in FINISHED or (job["status"] == "running" and len(started) >= attempt):
            return time.monotonic() - since
        assert time.monotonic() - since < 900, job
        time.sleep(0.2)


def assert_recorded_once(stack: Stack, api: httpx.Client, job_id: str, steps: int = STEPS) -> None:
    """Succeeded; steps 1..steps each exactly once; every checkpoint and the final adapter whole."""
    job = wait_for(api, job_id, lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    series = api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"limit": 10000}).json()["data"]
    assert [point["step"] for point in series] == list(range(1, steps + 1))
    run = stack.data_dir / "jobs" / job_id / "run"
    assert not list((run / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint left
    with session_scope(stack.db_url) as session:
        uris = session.scalars(select(Checkpoint.uri).where(Checkpoint.job_id == job_id)).all()
        assert steps in session.scalars(select(Checkpoint.step_number).where(Checkpoint.job_id == job_id))
        model = select(FineTunedModel.adapter_uri).where(FineTunedModel.job_id == job_id)
        final = session.scalars(model).one()
    for uri in [*uris, final]:
        _assert_adapter(stack.data_dir / uri)


def _assert_adapter(path: Path) -> None:
    from safetensors.torch import load_file

    assert (path / "adapter_config.json").is_file(), path
    assert load_file(str(path / "adapter_model.safetensors")), path  # readable to the end
