"""Celery tasks: thin, like views. Take an id, call the plain function that does the work, log the outcome.

The DB is the truth: nothing is returned to a result backend, and a task never raises for a job's own
failure (that is recorded on the job), so Celery never retries one.
"""

import logging
from typing import Any

from celery.signals import worker_shutting_down

from core.queues import EVALUATE_TASK, TRAIN_TASK, WEBHOOK_TASK
from core.settings import get_settings
from worker.celery_app import app
from worker.lease import SHUTDOWN

log = logging.getLogger(__name__)


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _checkpoint_and_requeue_on_shutdown(**_kwargs: Any) -> None:
    # Sent from the signal handler while a task runs (solo pool): the trainer's next control() poll
    # answers "pause", so the job checkpoints and is requeued; a warm shutdown then waits for that.
    SHUTDOWN.set()


@app.task(name=TRAIN_TASK)  # type: ignore[untyped-decorator]
def train(job_id: str) -> None:
    from worker.training import run_job  # torch loads with the first task, not when Celery imports us

    log.info("job %s: %s", job_id, run_job(job_id, settings=get_settings()))


@app.task(name=EVALUATE_TASK)  # type: ignore[untyped-decorator]
def evaluate(evaluation_id: str) -> None:
    from worker.evaluations import run_evaluation

    log.info("evaluation %s: %s", evaluation_id, run_evaluation(evaluation_id, settings=get_settings()))


@app.task(name=WEBHOOK_TASK)  # type: ignore[untyped-decorator]
def send_webhook(delivery_id: str) -> None:
    from worker.webhooks import deliver

    log.info("webhook %s: %s", delivery_id, deliver(delivery_id, settings=get_settings()))
