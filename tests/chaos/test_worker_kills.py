"""A worker dies (os._exit at a named point, as SIGKILL would leave it) at each point of a step's and a
checkpoint's sequence; the next worker finishes the job with every step recorded exactly once."""

import time
from collections.abc import Callable

import httpx
import pytest

from tests.chaos.conftest import assert_recorded_once, only_worker, wait_running_again
from tests.e2e.conftest import Stack
from worker.engine.checkpoint import CRASH_AT_ENV, CRASH_EXIT_CODE

pytestmark = pytest.mark.timeout(1800)

# The checkpoint at step 2, in order: step published to Redis (not yet in the DB), checkpoint staged
# (temp dir written), renamed into place, its steps flushed to the DB, its row committed.
POINTS = ["report.published", "checkpoint.staged", "checkpoint.renamed", "report.flushed", "report.recorded"]
# One in `make test` (the window that lost a step before the reconciliation); all in `make bench`.
FAST = {"checkpoint.renamed"}


@pytest.mark.parametrize(
    "point", [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in POINTS]
)
def test_a_kill_at_any_point_of_the_checkpoint_sequence_loses_and_repeats_nothing(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str], point: str
) -> None:
    crashing = only_worker(stack, **{CRASH_AT_ENV: f"{point}@2"})
    job_id = start_job()
    assert crashing.wait(timeout=900) == CRASH_EXIT_CODE
    killed = time.monotonic()
    stack.start_worker()
    recovery_s = wait_running_again(api, job_id, killed)
    assert_recorded_once(stack, api, job_id)
    print(f"kill at {point}@2: running again after {recovery_s:.1f}s (lease 6 s, reaper every 1 s)")


@pytest.mark.slow
def test_a_kill_after_the_last_checkpoint_still_ends_succeeded(
    stack: Stack, api: httpx.Client, start_job: Callable[..., str]
) -> None:
    crashing = only_worker(stack, **{CRASH_AT_ENV: "checkpoint.renamed@4"})
    job_id = start_job()
    assert crashing.wait(timeout=900) == CRASH_EXIT_CODE
    stack.start_worker()
    assert_recorded_once(stack, api, job_id)
