"""What a worker process tells the rest of the service about itself, through Celery's signals:

- presence in Redis (core/presence.py) every heartbeat interval: last seen, device, the task it runs and,
  on a GPU, its CUDA memory. The API's `/metrics` exports it; nothing is kept in the worker process.
- the ids of the task it runs (`job_id` or `evaluation_id`) on every log line, and the log format from
  the settings instead of Celery's own logging set-up.
"""

import logging
import sys
import threading
from contextvars import Token
from typing import Any

import redis
from celery.signals import setup_logging, task_postrun, task_prerun, worker_ready, worker_shutdown

from core.logs import configure_logging, new_log_context, reset_log_context
from core.presence import forget_presence, record_presence
from core.queues import EVALUATE_TASK, TRAIN_TASK
from core.settings import get_settings
from worker.jobs import worker_identity

log = logging.getLogger(__name__)

_ID_NAMES = {TRAIN_TASK: "job_id", EVALUATE_TASK: "evaluation_id"}


def gpu_memory(device: str) -> dict[str, int]:
    """CUDA memory of `device` once torch is loaded (the first task loads it); empty on CPU."""
    torch = sys.modules.get("torch")
    device = "cuda" if device == "auto" else device  # the worker's default when CUDA is there
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return {}
    return {
        "gpu_memory_allocated_bytes": int(torch.cuda.memory_allocated(device)),
        "gpu_memory_reserved_bytes": int(torch.cuda.memory_reserved(device)),
    }


class Presence:
    """A daemon thread recording this worker's state in Redis until `stop()`."""

    def __init__(
        self, client: "redis.Redis", *, worker_id: str, device: str, interval_s: float, devices: int = 1
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.device = device
        self.devices = devices  # what the worker offers one job; the API's /metrics shows it
        self.interval_s = interval_s
        self.task: tuple[str, str] | None = None  # (task name, job or evaluation id)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self) -> None:
        name, task_id = self.task or (None, None)
        record_presence(
            self.client, self.worker_id, device=self.device, devices=self.devices, task=name, task_id=task_id,
            **gpu_memory(self.device),
        )  # fmt: skip

    def _run(self) -> None:
        while True:
            try:
                self.record()
            except redis.RedisError:  # the next beat tries again; presence is for monitoring only
                log.warning("could not record the presence of worker %s", self.worker_id)
            if self._stopped.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            forget_presence(self.client, self.worker_id)
        except redis.RedisError:
            log.warning("could not remove the presence of worker %s", self.worker_id)


_presence: Presence | None = None
_log_context: Token[dict[str, str] | None] | None = None


@setup_logging.connect  # type: ignore[untyped-decorator]
def _configure_logging(**_kwargs: Any) -> None:
    # Connecting this signal is what stops Celery from installing its own handlers.
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_presence(**_kwargs: Any) -> None:
    global _presence
    settings = get_settings()
    client = redis.Redis.from_url(str(settings.redis_url), socket_connect_timeout=2, socket_timeout=5)
    _presence = Presence(
        client,
        worker_id=worker_identity(),
        device=settings.device or "auto",
        devices=settings.worker_devices,
        interval_s=settings.heartbeat_interval_s,
    )
    _presence.start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_presence(**_kwargs: Any) -> None:
    if _presence is not None:
        _presence.stop()


@task_prerun.connect  # type: ignore[untyped-decorator]
def _task_started(task: Any = None, args: Any = None, **_kwargs: Any) -> None:
    global _log_context
    name = getattr(task, "name", "")
    ids = {_ID_NAMES[name]: str(args[0])} if name in _ID_NAMES and args else {}
    _log_context = new_log_context(**ids)
    if _presence is not None and ids:
        _presence.task = (name, next(iter(ids.values())))
        _presence.record()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _task_finished(**_kwargs: Any) -> None:
    global _log_context
    if _presence is not None:
        _presence.task = None
    if _log_context is not None:
        reset_log_context(_log_context)
        _log_context = None
