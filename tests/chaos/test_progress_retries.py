"""Progress-aware retries on the whole service: a job whose worker is killed again and again ends
`succeeded` with every step once, as long as it checkpoints between the kills (a loss after a new
checkpoint costs no attempt)."""

import os
import random
import time
from collections.abc import Callable

import httpx
import pytest

from tests.chaos.conftest import assert_recorded_once, stop_workers
from tests.e2e.conftest import Stack, events
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
