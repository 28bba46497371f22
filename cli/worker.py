"""`sppo worker`: a Celery worker that runs training and evaluation tasks, one at a time.

The solo pool runs the task in the worker process itself: one job per process, and a killed worker takes
its training with it (the reaper then requeues the job, which resumes from its last checkpoint). Scale
out with more worker processes (one per GPU: `SPPO_DEVICE=cuda:1 sppo worker`).
"""

import logging
import os
from typing import Annotated

import typer

app = typer.Typer()
log = logging.getLogger(__name__)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "training,evaluation",
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default SPPO_DEVICE, else cuda if available).")
    ] = None,
    prepare_fixture: Annotated[
        bool, typer.Option(help="Check the shipped sppo-tiny fixture before taking tasks.")
    ] = False,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run a Celery worker for training and evaluation tasks (one task at a time)."""
    from app.settings import get_settings

    if device is not None:
        os.environ["SPPO_DEVICE"] = device
        get_settings.cache_clear()
    settings = get_settings()
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen = settings.device or _auto_device()
    typer.echo(f"sppo worker: queues {queues}, device {chosen}, broker {_redacted(str(settings.redis_url))}")
    if prepare_fixture:
        from worker.engine.fixtures import ensure_fixture

        typer.echo(f"sppo-tiny fixture ready at {ensure_fixture().model_dir}")
    from worker.celery_app import app as celery

    celery.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queues}",
            f"--hostname=sppo-{os.getpid()}@%h",
            # No worker-to-worker chatter: state is in the DB, control in Redis keys.
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={loglevel.upper()}",
        ]
    )


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not worth failing a start over a log line
        return "redis"
