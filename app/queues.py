"""Names the API and the workers share: Celery task names, queues and the per-job control key in Redis.

Kept apart from app/dispatch.py (which speaks HTTP errors) so the worker can import them without FastAPI.
"""

TRAIN_TASK = "sppo.train"
TRAIN_QUEUE = "training"
EVALUATE_TASK = "sppo.evaluate"
EVALUATION_QUEUE = "evaluation"
CONTROL_TTL_S = 7 * 24 * 3600  # a flag nobody read for a week belongs to a job that is long gone


def control_key(job_id: str) -> str:
    """Redis key holding "cancel" or "pause" for the worker running `job_id`."""
    return f"sppo:jobs:{job_id}:control"
