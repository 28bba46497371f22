"""Cancel, pause/resume and crash recovery of real training runs (uvicorn, Celery, Redis, PostgreSQL)."""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import FINISHED, Stack, events, jsonl, metric_steps, sppo_method, wait_for
from worker.engine.fixtures import Fixture

# Real training on a shared CPU: generous limits, so a loaded machine slows these tests down only.
pytestmark = pytest.mark.timeout(1800)

JobFactory = Callable[..., dict[str, Any]]


# Control is what is tested here, not learning: the smallest steps the engine takes.
BATCH = 4
SMALL = {"batch_size": BATCH, "ppo_epochs": 1, "minibatch_size": BATCH}


def _create(api: httpx.Client, training_file: str, **hyperparameters: Any) -> dict[str, Any]:
    method = sppo_method(**{**SMALL, **hyperparameters})
    response = api.post(
        "/v1/fine_tuning/jobs", json={"model": "sppo-tiny", "training_file": training_file, "method": method}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _stream_steps(stack: Stack, api: httpx.Client, job_id: str) -> list[int]:
    """Steps in the live stream of a finished job, in stream order (a finished job's stream just drains);
    the whole stream (`from=0-0`), not the newest records a bare subscription gets."""
    text = api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics/stream", params={"from": "0-0"}).text
    return [int(line.split('"step": ')[1].split(",")[0]) for line in text.splitlines() if '"step": ' in line]


def _running_at(api: httpx.Client, job_id: str, step: int) -> int:
    """The step the live stream shows done, once it is `step` or later (the DB's current_step lags)."""
    with api.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/metrics/stream", timeout=None) as response:
        for line in response.iter_lines():
            seen = json.loads(line[6:]).get("step", 0) if line.startswith("data: ") else 0
            if seen >= step:
                return int(seen)
    raise AssertionError(f"job {job_id} ended before step {step}")


def test_cancel_queued_and_running_jobs(
    stack: Stack, api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    long_file = upload(jsonl(tiny.train_file, 0, 40 * BATCH))
    running = _create(api, long_file)  # 40 steps: far longer than this test waits
    queued = _create(api, long_file)
    seen = _running_at(api, running["id"], 1)
    assert api.get(f"/v1/fine_tuning/jobs/{queued['id']}").json()["status"] == "queued"

    cancelled = api.post(f"/v1/fine_tuning/jobs/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    cancelled = api.post(f"/v1/fine_tuning/jobs/{running['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"  # at once; the worker stops within a step

    # The worker is free again: a new job runs to the end.
    follow_up = _create(api, upload(jsonl(tiny.train_file, 0, 2 * BATCH)))
    assert wait_for(api, follow_up["id"], lambda j: j["status"] in FINISHED)["status"] == "succeeded"

    # The worker reads the flag within 0.5 s and polls it during generation: the step in flight when the
    # flag is read is the last one (on a fast machine one more may have finished before it was read).
    recorded = metric_steps(api, running["id"])
    assert recorded == list(range(1, len(recorded) + 1)) and seen <= len(recorded) <= seen + 2
    assert api.get(f"/v1/fine_tuning/jobs/{running['id']}").json()["status"] == "cancelled"
    never_started = api.get(f"/v1/fine_tuning/jobs/{queued['id']}").json()
    assert never_started["status"] == "cancelled" and never_started["current_step"] == 0
    assert not any(e["message"].startswith("Job started") for e in events(api, queued["id"]))
    assert metric_steps(api, queued["id"]) == []
    worker_log = "".join(p.read_text() for p in stack.log_dir.glob("worker-*.log"))
    assert f"job {queued['id']} is not queued" in worker_log  # its message came and was dropped


def test_pause_then_resume_continues_at_the_same_step(
    stack: Stack, api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    total = 12  # steps of 4 samples are fast: enough left after step 2 for the pause to land mid-run
    job = _create(api, upload(jsonl(tiny.train_file, 0, BATCH * total)), checkpoint_interval=10)
    _running_at(api, job["id"], 2)
    response = api.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert response.status_code == 200, response.text
    paused = wait_for(api, job["id"], lambda j: j["status"] in ("paused", *FINISHED))
    assert paused["status"] == "paused", paused
    at = paused["current_step"]
    assert 2 <= at < total
    assert metric_steps(api, job["id"]) == list(range(1, at + 1))
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [at]  # pausing wrote it (interval 10 never did)
    time.sleep(2)  # the worker is free and the job stays paused
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "paused"

    resumed = api.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    assert resumed["status"] in ("queued", "running")  # the idle worker may claim it before the API answers
    done = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert done["status"] == "succeeded", done
    assert metric_steps(api, job["id"]) == list(range(1, total + 1))
    assert _stream_steps(stack, api, job["id"]) == list(range(1, total + 1))  # no gaps, no repeats
    messages = [e["message"] for e in events(api, job["id"])]
    assert f"Resumed from the checkpoint at step {at} of {total}" in messages
    assert sum("esumed from" in m for m in messages) == 1  # one resume event, not the engine's as well


def test_worker_killed_mid_training_job_resumes_on_a_new_worker(
    stack: Stack, api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    total = 12  # enough steps left after step 3 that the kill lands mid-run on a fast machine
    job = _create(api, upload(jsonl(tiny.train_file, 0, BATCH * total)), checkpoint_interval=2)
    _running_at(api, job["id"], 3)  # past the checkpoint at 2: step 3 (at least) runs twice
    stack.kill_worker()
    killed_at = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["current_step"]
    stack.start_worker()
    done = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert done["status"] == "succeeded", done
    # The lost run had checkpointed step 2 after starting at step 0: the loss cost no attempt.
    assert (done["attempt"], done["worker_losses"]) == (1, 1)
    assert done["current_step"] == total and killed_at < total
    assert metric_steps(api, job["id"]) == list(range(1, total + 1))  # every step exactly once
    assert _stream_steps(stack, api, job["id"]) == list(range(1, total + 1))
    messages = [e["message"] for e in events(api, job["id"])]
    assert any("stopped responding" in m and "requeued without using an attempt" in m for m in messages)
    assert any(m.startswith("Resumed from the checkpoint at step") for m in messages)


def test_worker_shut_down_cleanly_requeues_its_job_which_continues_elsewhere(
    stack: Stack, api: httpx.Client, upload: Callable[..., str], tiny: Fixture
) -> None:
    total = 12  # enough steps left after step 2 that the shutdown lands mid-run on a fast machine
    job = _create(api, upload(jsonl(tiny.train_file, 0, BATCH * total)), checkpoint_interval=10)
    _running_at(api, job["id"], 2)
    stack.stop_worker()  # returns once the worker has checkpointed, requeued the job and exited
    requeued = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert requeued["status"] == "queued" and requeued["attempt"] == 1, requeued  # not a failure
    at = requeued["current_step"]
    stack.start_worker()
    done = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    assert metric_steps(api, job["id"]) == list(range(1, total + 1))
    # The live stream keeps every run of a step: none missing, none run twice (it resumed where it stopped).
    assert _stream_steps(stack, api, job["id"]) == list(range(1, total + 1))
    messages = [e["message"] for e in events(api, job["id"])]
    assert any("shut down" in m and f"resumes from step {at}" in m for m in messages), messages
    assert f"Resumed from the checkpoint at step {at} of {total}" in messages
