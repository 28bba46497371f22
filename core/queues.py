"""Names the API and the workers share: Celery task names, queues and the per-job control key in Redis.

Training queues are per device count: `training` for one-device jobs (the name single-device deployments
already consume), `training.devices.N` for jobs of N devices. A worker consumes the queue of the count it
offers (`sppo worker --devices N`), so a job only ever reaches a worker that can hold it.

Kept apart from app/dispatch.py (which speaks HTTP errors) so the worker can import them without FastAPI.
Every Redis key and Celery queue carries `SPPO_REDIS_PREFIX`, so two installs can share one Redis.
"""

from typing import Any

from core.settings import Settings, get_settings

TRAIN_TASK = "sppo.train"
TRAIN_QUEUE = "training"
EVALUATE_TASK = "sppo.evaluate"
EVALUATION_QUEUE = "evaluation"
WEBHOOK_TASK = "sppo.webhook"
WEBHOOK_QUEUE = "webhooks"  # apart from evaluations, so a delivery never waits behind a long scoring
CONTROL_TTL_S = 7 * 24 * 3600  # a flag nobody read for a week belongs to a job that is long gone


def training_queue(n_devices: int) -> str:
    """The Celery queue of jobs that train on `n_devices` devices of one worker host."""
    return TRAIN_QUEUE if n_devices == 1 else f"{TRAIN_QUEUE}.devices.{n_devices}"


def training_queues(settings: Settings) -> list[str]:
    """Every training queue of this deployment: one per device count its workers offer."""
    return [training_queue(n) for n in settings.training_device_counts]


def job_devices(hyperparameters: dict[str, Any]) -> int:
    """The devices a job asked for (1 when it did not say)."""
    return int(hyperparameters.get("n_devices") or 1)


def redis_key(name: str) -> str:
    """`name` under this install's prefix (`sppo:` by default)."""
    return f"{get_settings().redis_prefix}:{name}"


# kombu's Redis transport keeps a queue's messages of priority 3-5, 6-8 and 9 in lists beside its own (0-2)
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def broker_lists(queue: str) -> list[str]:
    """The Redis lists holding `queue`'s waiting messages, the one a worker pops first (priority 0) first."""
    return [redis_key(queue) + suffix for suffix in _PRIORITY_SUFFIXES]


def broker_options() -> dict[str, str]:
    """Kombu transport options both Celery apps (API and worker) use: every broker key prefixed."""
    return {"global_keyprefix": redis_key("")}


def control_key(job_id: str) -> str:
    """Redis key holding "cancel" or "pause" for the worker running `job_id`."""
    return redis_key(f"jobs:{job_id}:control")
