"""Celery tasks: thin, like views. Take an id, call the plain function that does the work, log the outcome.

The DB is the truth: nothing is returned to a result backend, and a task never raises for a job's own
failure (that is recorded on the job), so Celery never retries one.
"""

import logging

from app.queues import EVALUATE_TASK, TRAIN_TASK
from app.settings import get_settings
from worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK)  # type: ignore[untyped-decorator]
def train(job_id: str) -> None:
    from worker.training import run_job  # torch loads with the first task, not when Celery imports us

    log.info("job %s: %s", job_id, run_job(job_id, settings=get_settings()))


@app.task(name=EVALUATE_TASK)  # type: ignore[untyped-decorator]
def evaluate(evaluation_id: str) -> None:
    from worker.evaluations import run_evaluation

    log.info("evaluation %s: %s", evaluation_id, run_evaluation(evaluation_id, settings=get_settings()))
