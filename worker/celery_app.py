"""The Celery application of the workers: Redis broker from the settings, queues `training` and `evaluation`.

Delivery is at-least-once and the DB is the truth: a task acknowledges its message only after it has run
(`task_acks_late`), so a message whose worker died is delivered again, and every task begins with a
guarded claim (queued → running) that drops a message whose job is not queued any more. Job state never
lives in a Celery result backend.

Visibility timeout: with the Redis transport an unacknowledged message is handed out again once it has
been reserved for longer than `visibility_timeout`. A training task keeps its message unacknowledged for
the whole run (hours), so redelivery of a *running* job's message is expected and harmless (the claim
drops it). It is set to 30 minutes so that a message reserved by a worker that died before claiming its
job comes back within that time; lost *running* jobs are recovered sooner by the reaper's heartbeat lease
(app/services/reaper.py), not by redelivery.
"""

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from core.queues import EVALUATION_QUEUE, TRAIN_QUEUE, broker_options, training_queues
from core.settings import get_settings

VISIBILITY_TIMEOUT_S = 30 * 60


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


def create_celery_app() -> Celery:
    settings = get_settings()
    celery = Celery("sppo", broker=str(settings.redis_url), include=["worker.tasks", "worker.presence"])
    celery.conf.update(
        # Each queue on its own direct exchange and routing key, as the API's send_task(queue=...) sends.
        task_queues=[*map(_queue, training_queues(settings)), _queue(EVALUATION_QUEUE)],
        task_default_queue=TRAIN_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per worker process: a long training run must not sit on a second job.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,  # the DB is the truth; no result backend
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S, **broker_options()},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return celery


app = create_celery_app()
