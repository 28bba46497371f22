"""A job's step and checkpoint rows in the DB, and their reconciliation with the checkpoints on disk.

Metric points are keyed (job_id, step) and checkpoints (job_id, step_number), so writing a row again
replaces it: a step re-run after a crash is recorded once. What the DB holds when a run (re)starts is
made to agree with the checkpoint it resumes from (`reconcile`), whatever instant the last process died at.
"""

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.models import Checkpoint, MetricPoint, TrainingSample, new_id, now

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
METRICS_JSON = "metrics.json"  # a checkpoint's metrics, written by the engine (worker/engine/checkpoint.py)


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE, on SQLite and PostgreSQL alike."""
    if not rows:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(rows)
    changed = {c: statement.excluded[c] for c in rows[0] if c not in keys and c != "id"}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changed))


def upsert_points(session: Session, job_id: str, points: dict[int, dict[str, float]]) -> None:
    rows = [
        {"job_id": job_id, "step": step, "metrics": metrics, "created_at": now()}
        for step, metrics in sorted(points.items())
    ]
    upsert(session, MetricPoint.__table__, rows, ["job_id", "step"])  # type: ignore[arg-type]


def replace_samples(session: Session, job_id: str, samples: dict[int, list[dict[str, Any]]]) -> None:
    """The steps' kept samples (worker/engine/samples.py's dicts), replacing what a step's earlier run
    kept: a step run again after a crash may keep other rows of its batch."""
    if not samples:
        return
    steps = sorted(samples)
    session.execute(
        delete(TrainingSample).where(TrainingSample.job_id == job_id, TrainingSample.step.in_(steps))
    )
    session.add_all(
        TrainingSample(
            job_id=job_id,
            step=step,
            position=sample["index"],
            prompt=sample["prompt"],
            completion=sample["completion"],
            reward=sample["reward"],
            sub_rewards=sample["sub_rewards"],
            truncated=sample["truncated"],
        )
        for step in steps
        for sample in samples[step]
    )


def find_adapter_dir(path: Path) -> Path:
    """The peft adapter inside an engine checkpoint (or the checkpoint itself when it is one)."""
    for candidate in (path / "adapter", path / "policy", path):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return path / "adapter"


def checkpoint_row(
    *, job_id: str, model_name: str, data_dir: Path, step: int, path: Path, metrics: dict[str, float]
) -> dict[str, Any]:
    adapter = find_adapter_dir(Path(path))
    uri = str(adapter.relative_to(data_dir)) if adapter.is_relative_to(data_dir) else str(adapter)
    return {
        "id": new_id("ftckpt"),
        "job_id": job_id,
        "step_number": step,
        "fine_tuned_model_checkpoint": f"{model_name}:ckpt-step-{step}",
        "uri": uri,
        "metrics": {"step": step, **metrics},
        "created_at": now(),
    }


def upsert_checkpoint(session: Session, row: dict[str, Any]) -> None:
    upsert(session, Checkpoint.__table__, [row], ["job_id", "step_number"])  # type: ignore[arg-type]


def drop_removed_checkpoints(session: Session, *, job_id: str, data_dir: Path) -> None:
    # The engine keeps the last few checkpoints (and the best): list only those it still has.
    for checkpoint_id, stored in session.execute(
        select(Checkpoint.id, Checkpoint.uri).where(Checkpoint.job_id == job_id)
    ).all():
        if not (data_dir / stored).exists():
            session.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))


def saved_metrics(checkpoint: Path) -> dict[str, float]:
    """The metrics the engine saved with a checkpoint (empty when the file is unreadable)."""
    try:
        saved = json.loads((checkpoint / METRICS_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return {name: float(value) for name, value in saved.items()}


def reconcile(
    session: Session,
    *,
    job_id: str,
    model_name: str,
    data_dir: Path,
    start_step: int,
    steps: dict[int, dict[str, float]],
    checkpoints: list[tuple[int, Path]],
) -> None:
    """Make the DB agree with the checkpoint at `start_step` that a run resumes from (0: a fresh start).

    `steps` are the metrics of steps 1..start_step from the engine's log: those the DB lacks (a kill
    came between the checkpoint's rename and the flush of its steps) are written; rows after start_step
    (flushed by a run that died before its next checkpoint) are dropped, since those steps run again.
    `checkpoints` are those on disk up to start_step: a missing row (killed before it was written) is added.
    Samples after start_step go too; those of earlier steps lost in such a kill are not restored (the
    engine logs no text).
    """
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > start_step))
    session.execute(
        delete(TrainingSample).where(TrainingSample.job_id == job_id, TrainingSample.step > start_step)
    )
    stored = set(session.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id)))
    missing = {step: metrics for step, metrics in steps.items() if step not in stored}
    if missing:
        log.warning("job %s: %d step record(s) restored from the metrics log", job_id, len(missing))
        upsert_points(session, job_id, missing)
    known = set(session.scalars(select(Checkpoint.step_number).where(Checkpoint.job_id == job_id)))
    for step, path in checkpoints:
        if step not in known:
            log.warning("job %s: checkpoint row of step %d restored", job_id, step)
            upsert_checkpoint(
                session,
                checkpoint_row(
                    job_id=job_id,
                    model_name=model_name,
                    data_dir=data_dir,
                    step=step,
                    path=path,
                    metrics=saved_metrics(path),
                ),
            )
    drop_removed_checkpoints(session, job_id=job_id, data_dir=data_dir)
