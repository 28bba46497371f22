"""Progress-aware retries on the whole service: a job whose worker is killed again and again ends
`succeeded` with every step once, as long as it checkpoints between the kills (a loss after a new
checkpoint costs no attempt), and a job failed by lost workers resumes from its last checkpoint through
the OpenAI SDK."""

import os
import random
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from sqlalchemy import update

from core.db import session_scope
from core.models import Job
from tests.chaos.conftest import STEPS, assert_recorded_once, stop_workers
from tests.e2e.conftest import FINISHED, Stack, events, wait_for
from worker.engine.checkpoint import CRASH_AT_ENV, CRASH_EXIT_CODE

pytestmark = pytest.mark.timeout(1800)

# Mid-step: the step is live in Redis, its metrics not in the DB, the previous step's checkpoint recorded.
KILL_AT = "report.published"
FREE_REQUEUE = "requeued without using an attempt"


def kill_steps(kills: int, steps: int) -> list[int]:
    """`kills` distinct random steps after the first: with a checkpoint every step, each killed run has
    recorded one after the step it started from. SPPO_CHAOS_SEED repeats a run's choice."""
    seed = int(os.environ.get("SPPO_CHAOS_SEED", random.randrange(2**32)))
    chosen = sorted(random.Random(seed).sample(range(2, steps + 1), kills))
    print(f"SPPO_CHAOS_SEED={seed}: kills at steps {chosen} of {steps}")
    return chosen


def survive_kills(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str], *, kills: int, steps: int
) -> None:
    """A job of `steps` steps whose worker dies at `kills` random steps ends succeeded, every step once."""
    stop_workers(stack)
    job_id = start_job(steps=steps, checkpoint_interval=1)
    started = time.monotonic()
    for step in kill_steps(kills, steps):
        crashing = stack.start_worker(**{CRASH_AT_ENV: f"{KILL_AT}@{step}"})
        assert crashing.wait(timeout=900) == CRASH_EXIT_CODE, f"the worker did not die at step {step}"
    stack.start_worker()
    assert_recorded_once(stack, api, job_id, steps=steps)
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert (job["attempt"], job["worker_losses"]) == (1, kills)  # before: failed at the 3rd loss
    requeues = [e["message"] for e in events(api, job_id) if "stopped responding" in e["message"]]
    assert len(requeues) == kills and all(FREE_REQUEUE in m for m in requeues), requeues
    print(f"{kills} kills survived; succeeded {time.monotonic() - started:.1f}s after submission")


def test_a_job_survives_three_worker_kills_at_random_steps(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str]
) -> None:
    survive_kills(stack, api, start_job, kills=3, steps=6)


@pytest.mark.slow
def test_a_job_survives_five_worker_kills_at_random_steps(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str]
) -> None:
    survive_kills(stack, api, start_job, kills=5, steps=12)


def test_a_job_failed_by_lost_workers_resumes_from_its_checkpoint_through_the_sdk(
    stack: Stack, key: str, api: httpx.Client, start_job: Callable[..., str]
) -> None:
    stop_workers(stack)
    job_id = start_job()  # a checkpoint every 2 steps
    with session_scope(stack.db_url) as session:  # one attempt: the first loss without progress fails it
        session.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
        session.commit()
    # Two runs die at step 3: the first after the checkpoint at step 2 (progress: requeued), the second
    # resumed from step 2 and recorded nothing newer (its only attempt is spent: worker_lost).
    for _ in range(2):
        crashing = stack.start_worker(**{CRASH_AT_ENV: f"{KILL_AT}@3"})
        assert crashing.wait(timeout=900) == CRASH_EXIT_CODE
    failed = wait_for(api, job_id, lambda j: j["status"] in FINISHED)
    assert failed["status"] == "failed" and failed["worker_losses"] == 2, failed
    assert failed["error"]["code"] == "worker_lost"
    assert "Resume the job to continue from the checkpoint at step 2" in failed["error"]["message"]

    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    resumed = client.fine_tuning.jobs.resume(job_id)
    assert resumed.status == "queued" and resumed.error is None
    stack.start_worker()
    assert_recorded_once(stack, api, job_id)  # steps 1-2 from the first run, 3-4 from the resumed one
    messages = [e["message"] for e in events(api, job_id)]
    assert f"Resumed from the checkpoint at step 2 of {STEPS}" in messages
    assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
