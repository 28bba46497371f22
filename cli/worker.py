"""`sppo worker`: a Celery worker that runs training and evaluation tasks, one at a time.

The solo pool runs the task in the worker process itself: one job per process, and a killed worker takes
its training with it (the reaper then requeues the job, which resumes from its last checkpoint). Scale
out with more worker processes (one per GPU: `SPPO_DEVICE=cuda:1 sppo worker`), or give one worker several
devices for jobs that ask for them (`sppo worker --devices 4`: it consumes `training.devices.4` and runs
each job on its host's 4 devices with torchrun; docs/multi-device.md).
"""

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer()
log = logging.getLogger(__name__)


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues to consume (default: the training queue of --devices, "
            "evaluation and webhooks)."
        ),
    ] = None,
    devices: Annotated[
        int | None,
        typer.Option(min=1, help="Devices this worker gives one job (default SPPO_WORKER_DEVICES, else 1)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default SPPO_DEVICE, else cuda if available).")
    ] = None,
    prepare_fixture: Annotated[
        bool, typer.Option(help="Check the shipped sppo-tiny fixture before taking tasks.")
    ] = False,
    loglevel: Annotated[str | None, typer.Option(help="Log level (default SPPO_LOG_LEVEL).")] = None,
) -> None:
    """Run a Celery worker for training and evaluation tasks (one task at a time)."""
    settings = _settings(device=device, devices=devices, loglevel=loglevel)
    chosen = settings.device or _auto_device()
    queues = queues or default_queues(settings.worker_devices)
    _check_offer(settings, chosen)
    log.info(
        "sppo worker: queues %s, device %s, broker %s", queues, chosen, _redacted(str(settings.redis_url))
    )
    if prepare_fixture:
        from worker.engine.fixtures import ensure_fixture

        log.info("sppo-tiny fixture ready at %s", ensure_fixture().model_dir)
    _run_celery(settings, queues)


def _settings(*, device: str | None, devices: int | None, loglevel: str | None) -> "Settings":
    """The settings with the command's options over the environment's, and the log configured by them."""
    from core.logs import configure_logging
    from core.settings import get_settings

    if device is not None:
        os.environ["SPPO_DEVICE"] = device
    if devices is not None:
        os.environ["SPPO_WORKER_DEVICES"] = str(devices)  # presence reports it from the settings
    if loglevel is not None:
        os.environ["SPPO_LOG_LEVEL"] = loglevel.upper()  # the worker's Celery signals read the settings
    get_settings.cache_clear()
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return settings


def _check_offer(settings: "Settings", device: str) -> None:
    """Warn of a device count no job asks for; refuse (exit 2) a rollout backend every job would fail on."""
    if settings.worker_devices not in settings.training_device_counts:
        log.warning(
            "this worker offers %d device(s), but SPPO_TRAINING_DEVICE_COUNTS (%s) does not list it: the API "
            "refuses such jobs, so its queue stays empty",
            settings.worker_devices, settings.training_device_counts,
        )  # fmt: skip
    if settings.rollout_backend == "vllm":
        from worker.engine.vllm_rollout import unavailable_reason

        # refused here, not job by job: every job this worker took would fail on it
        if (problem := unavailable_reason(device)) is not None:
            log.error("SPPO_ROLLOUT_BACKEND=vllm: %s", problem)
            raise typer.Exit(2)


def _run_celery(settings: "Settings", queues: str) -> None:
    from worker.celery_app import app as celery

    # JSON logs: no ASCII-art banner on stdout, so every line a container writes parses.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    celery.worker_main(
        [
            *quiet,
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queues}",
            f"--hostname=sppo-{os.getpid()}@%h",
            # No worker-to-worker chatter: state is in the DB, control in Redis keys.
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={settings.log_level}",
        ]
    )


def default_queues(devices: int) -> str:
    """The training queue of jobs with exactly `devices` devices, evaluations and webhook deliveries."""
    from core.queues import EVALUATION_QUEUE, WEBHOOK_QUEUE, training_queue

    return f"{training_queue(devices)},{EVALUATION_QUEUE},{WEBHOOK_QUEUE}"


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not worth failing a start over a log line
        return "redis"
