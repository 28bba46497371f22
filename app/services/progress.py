"""A job's progress for clients: the metric series (DB) and checkpoint adapters; the live stream of the
same series is app/services/live_metrics.py.
"""

import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.services.jobs import get_job
from app.services.model_card import model_card, portable_adapter_config
from core.models import Checkpoint, Job, MetricPoint, Tenant
from core.settings import Settings
from core.storage import artifact_store


def list_metrics(
    session: Session, *, tenant: Tenant, job_id: str, after_step: int | None, limit: int
) -> tuple[list[MetricPoint], bool]:
    """Metric points in step order, after `after_step`; returns (points, has_more)."""
    get_job(session, tenant=tenant, job_id=job_id)
    query = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if after_step is not None:
        query = query.where(MetricPoint.step > after_step)
    points = list(session.scalars(query.order_by(MetricPoint.step).limit(limit + 1)))
    return points[:limit], len(points) > limit


def get_checkpoint(session: Session, *, tenant: Tenant, job_id: str, checkpoint_id: str) -> Checkpoint:
    get_job(session, tenant=tenant, job_id=job_id)
    checkpoint = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.id == checkpoint_id)
    )
    if checkpoint is None:
        raise NotFound(f"No checkpoint '{checkpoint_id}' in job '{job_id}'.", param="checkpoint_id")
    return checkpoint


def adapter_archive(settings: Settings, checkpoint: Checkpoint, job: Job) -> Path:
    """A temporary .tar.gz of the checkpoint's peft adapter, as `<checkpoint id>/adapter_config.json, ...`.

    Extract it and pass the folder to `peft.PeftModel.from_pretrained(base_model, folder)`: its config
    names the base model by registry name and a README.md model card tells how. The caller deletes the
    file once it is sent.
    """
    store = artifact_store(settings)
    if not store.exists(f"{checkpoint.uri}/adapter_config.json"):
        raise NotFound(
            f"The adapter of checkpoint '{checkpoint.id}' is no longer stored.", param="checkpoint_id"
        )
    fd, name = tempfile.mkstemp(prefix="sppo-adapter-", suffix=".tar.gz")
    os.close(fd)
    try:
        with store.local_copy(checkpoint.uri) as source, tarfile.open(name, "w:gz") as archive:
            for file in sorted(source.iterdir()):
                if file.name in ("adapter_config.json", "README.md") or not file.is_file():
                    continue
                archive.add(file, arcname=f"{checkpoint.id}/{file.name}")
            config = portable_adapter_config(
                (source / "adapter_config.json").read_bytes(), base_model=job.base_model
            )
            _add_bytes(archive, f"{checkpoint.id}/adapter_config.json", config)
            _add_bytes(archive, f"{checkpoint.id}/README.md", model_card(job, checkpoint).encode())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _add_bytes(archive: tarfile.TarFile, arcname: str, content: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime, info.mode = len(content), int(time.time()), 0o644
    archive.addfile(info, io.BytesIO(content))
