"""Names the API and the workers share: Celery task names, queues and the per-job control key in Redis.

Kept apart from app/dispatch.py (which speaks HTTP errors) so the worker can import them without FastAPI.
Every Redis key and Celery queue carries `SPPO_REDIS_PREFIX`, so two installs can share one Redis.
"""

from app.settings import get_settings

TRAIN_TASK = "sppo.train"
TRAIN_QUEUE = "training"
EVALUATE_TASK = "sppo.evaluate"
EVALUATION_QUEUE = "evaluation"
CONTROL_TTL_S = 7 * 24 * 3600  # a flag nobody read for a week belongs to a job that is long gone


def redis_key(name: str) -> str:
    """`name` under this install's prefix (`sppo:` by default)."""
    return f"{get_settings().redis_prefix}:{name}"


def broker_options() -> dict[str, str]:
    """Kombu transport options both Celery apps (API and worker) use: every broker key prefixed."""
    return {"global_keyprefix": redis_key("")}


def control_key(job_id: str) -> str:
    """Redis key holding "cancel" or "pause" for the worker running `job_id`."""
    return redis_key(f"jobs:{job_id}:control")
