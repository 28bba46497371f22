"""The trainer's callbacks for a job: live metrics in Redis, metric points, checkpoints, events and progress
in the DB, and the answer to the trainer's `control()` poll (continue, cancel or pause).

Every DB write goes through the job's lease (worker/lease.py): once the job is no longer this worker's, the
reporter writes nothing more and `control()` answers "cancel". Metric points are upserts keyed (job_id,
step): a step re-run after a crash replaces its row, so every step is recorded exactly once.

Exactly once whatever instant the worker dies at: metric points reach the DB in batches, so a kill
between the engine renaming a checkpoint into place and the next flush would leave the checkpoint's
steps unrecorded (the resumed run starts after them). So a run's start reconciles the DB with the
checkpoint it resumes from: steps up to it come from the engine's metrics log when missing, rows after
it are dropped (those steps run again), and checkpoint rows follow the checkpoints on disk.
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from core.lifecycle import add_event
from core.models import now
from core.storage import ArtifactStore
from worker.alarms import AlarmBook
from worker.artifacts import publish_checkpoints
from worker.engine.callbacks import Control, Level, StartInfo, TrainerCallbacks
from worker.engine.checkpoint import crash_point, list_checkpoints, step_metrics
from worker.lease import JobLease
from worker.livestream import Records, drop_steps_after, earlier_steps, publish_step
from worker.records import (
    checkpoint_row,
    drop_removed_checkpoints,
    reconcile,
    replace_samples,
    upsert_checkpoint,
    upsert_points,
)

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 2.0  # metric points reach the DB at most this late (and at every checkpoint and the end)
ENGINE_RESUMED = "resumed from checkpoint"  # the engine's own resume message, said again by on_start


class JobReporter(TrainerCallbacks):
    """TrainerCallbacks for one claimed job (see INTERFACES.md); thread-safe where the trainer needs it."""

    def __init__(
        self,
        *,
        job_id: str,
        worker_id: str,
        model_name: str,
        store: ArtifactStore,
        sessions: sessionmaker[Session],
        redis_client: "redis.Redis",
        heartbeat_interval_s: float,
        db_retry_s: float,
        alarms: AlarmBook | None = None,
    ) -> None:
        self.job_id = job_id
        self.lease = JobLease(
            job_id=job_id,
            worker_id=worker_id,
            sessions=sessions,
            redis_client=redis_client,
            heartbeat_interval_s=heartbeat_interval_s,
            db_retry_s=db_retry_s,
        )
        self.model_name = model_name  # the fine-tuned model name; checkpoints are named after it
        self.store = store  # where checkpoints are published; its data dir holds the run directory
        self._sessions = sessions
        self._redis = redis_client
        self._lock = threading.Lock()
        self._pending: dict[int, dict[str, float]] = {}
        self._pending_samples: dict[int, list[dict[str, Any]]] = {}  # flushed with the points
        self._last_flush = time.monotonic()
        self._run_started = time.monotonic()
        self.start_step = 0
        self.total_steps: int | None = None
        self.current_step = 0
        self.trained_tokens: int | None = None  # the engine's cumulative perf/tokens, once a step reports it
        self.last_eval: dict[str, float] = {}
        self.alarms = alarms or AlarmBook(window=5)

    def _progress(self) -> dict[str, Any]:
        values: dict[str, Any] = {"current_step": self.current_step, "alarms": self.alarms.public()}
        if self.trained_tokens is not None:
            values["trained_tokens"] = self.trained_tokens
        done = self.current_step - self.start_step
        if self.total_steps and done > 0:
            per_step = (time.monotonic() - self._run_started) / done
            values["estimated_finish"] = now() + int(per_step * (self.total_steps - self.current_step))
        return values

    def flush(self) -> bool:
        """Persist pending metric points and progress (upserts keyed by step)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            samples, self._pending_samples = self._pending_samples, {}
            self._last_flush = time.monotonic()
        written = False
        try:
            written = self.lease.write(
                lambda session: self._record(session, pending, samples), **self._progress()
            )
        finally:
            if not written:  # keep them (for the next flush, or flush_after_cancel); newer values win
                with self._lock:
                    self._pending = {**pending, **self._pending}
                    self._pending_samples = {**samples, **self._pending_samples}
        return written

    def _record(
        self, session: Session, points: dict[int, dict[str, float]], samples: dict[int, list[dict[str, Any]]]
    ) -> None:
        upsert_points(session, self.job_id, points)
        replace_samples(session, self.job_id, samples)

    def flush_after_cancel(self) -> None:
        """Keep the steps this worker finished before the user's cancel reached it."""
        with self._lock:
            pending, self._pending = self._pending, {}
            samples, self._pending_samples = self._pending_samples, {}
        if pending or samples:
            self.lease.write_after_cancel(lambda session: self._record(session, pending, samples))

    def event(self, message: str, *, level: str = "info", type: str = "message", data: Any = None) -> None:
        self.lease.write(
            lambda session: add_event(
                session, job_id=self.job_id, message=message, level=level, type=type, data=data
            )
        )

    def detail(self, text: str | None, *, event: bool = False) -> None:
        """What the worker is doing before training starts (`status_detail`); optionally as an event too."""
        work: Callable[[Session], object] = lambda _session: None  # noqa: E731
        if event and text is not None:
            work = lambda session: add_event(session, job_id=self.job_id, message=text)  # noqa: E731
        self.lease.write(work, status_detail=text)

    def _raise_alarms(self, raised: list[dict[str, Any]]) -> None:
        """One event per newly raised alarm; the job's `alarms` column carries the counts."""

        def record(session: Session) -> None:
            for alarm in raised:
                add_event(
                    session,
                    job_id=self.job_id,
                    message=f"Alarm: {alarm['message']}",
                    level=alarm["level"],
                    data={"alarm": alarm["code"], "step": alarm["last_step"]},
                )

        if raised:
            self.lease.write(record, alarms=self.alarms.public())

    def _earlier_steps(self, step: int) -> Records:
        with self._lock:
            pending = dict(self._pending)
        return earlier_steps(self._sessions, self.job_id, step, pending)

    # --- TrainerCallbacks ------------------------------------------------------------------------------

    def on_start(self, info: StartInfo) -> None:
        self.start_step = info.start_step
        self.total_steps = info.total_steps
        self.current_step = self.start_step
        self._run_started = time.monotonic()
        if self.start_step:
            drop_steps_after(self._redis, self.job_id, self.start_step)
            message = f"Resumed from the checkpoint at step {self.start_step} of {self.total_steps}"
        else:
            message = f"Training started: {self.total_steps} steps"
        # A checkpoint a killed attempt saved but never published: in the store before its row is restored.
        publish_checkpoints(self.store, info.output_dir)
        steps = step_metrics(info.output_dir, upto=self.start_step)
        checkpoints = [(s, p) for s, p in list_checkpoints(info.output_dir) if s <= self.start_step]

        def record(session: Session) -> None:
            reconcile(
                session,
                job_id=self.job_id,
                model_name=self.model_name,
                data_dir=self.store.data_dir,
                start_step=self.start_step,
                steps=steps,
                checkpoints=checkpoints,
            )
            add_event(
                session,
                job_id=self.job_id,
                message=message,
                data={"start_step": self.start_step, "total_steps": self.total_steps},
            )

        self.lease.write(
            record,
            total_steps=self.total_steps,
            run_start_step=self.start_step,  # the checkpoint reconcile just recorded: no progress yet
            status_detail=None,
            **self._progress(),
        )

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        metrics = {name: float(value) for name, value in metrics.items()}
        publish_step(self._redis, self.job_id, step, metrics, self._earlier_steps)
        crash_point("report.published", step)
        with self._lock:
            self._pending[step] = metrics
            self.current_step = step
            if "perf/tokens" in metrics:  # cumulative over the whole run, resumes included
                self.trained_tokens = int(metrics["perf/tokens"])
            due = time.monotonic() - self._last_flush >= FLUSH_EVERY_S
            raised = self.alarms.observe_step(step, metrics)
        self._raise_alarms(raised)
        if due:
            self.flush()

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        # Written with the step's metric point (the next flush): both or neither reach the DB.
        with self._lock:
            self._pending_samples[step] = samples

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        if level == "warning":  # counted into the step's alarms (on_step), so repeats collapse into one
            with self._lock:
                self.alarms.warning(message)
            return
        if message.startswith(ENGINE_RESUMED):
            return  # on_start writes the one resume event, with the step count
        self.event(message, level=level, data=data)

    def on_evaluation(self, step: int, scores: dict[str, float]) -> None:
        # The engine also adds the scores to the step's metrics (on_step follows): only the event here.
        scores = {name: float(value) for name, value in scores.items()}
        self.last_eval = scores
        with self._lock:
            raised = self.alarms.observe_evaluation(step, scores)
        self._raise_alarms(raised)
        summary = ", ".join(f"{name}={value:.3f}" for name, value in sorted(scores.items()))
        self.event(f"Evaluation at step {step}: {summary}", type="metrics", data={"step": step, **scores})

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.flush()  # the checkpoint's steps must be in the DB before the checkpoint row says they exist
        crash_point("report.flushed", step)
        # In the store before its row: a listed checkpoint can be downloaded, and resumed on any host.
        publish_checkpoints(self.store, path.parent.parent, written=path)  # <output_dir>/checkpoints/step-N
        values = {name: float(value) for name, value in metrics.items()}
        row = checkpoint_row(
            job_id=self.job_id, model_name=self.model_name, data_dir=self.store.data_dir, step=step,
            path=path, metrics=values,
        )  # fmt: skip

        def record(session: Session) -> None:
            upsert_checkpoint(session, row)
            drop_removed_checkpoints(session, job_id=self.job_id, data_dir=self.store.data_dir)
            add_event(
                session,
                job_id=self.job_id,
                message=f"Checkpoint saved at step {step}",
                type="metrics",
                data={"step": step, **values},
            )

        self.lease.write(record)
        crash_point("report.recorded", step)

    def control(self) -> Control:
        answer = self.lease.control()
        if answer == "continue" and time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()
        return "cancel" if self.lease.lost else answer

    def close(self) -> None:
        """Stop the heartbeat; the caller flushes what is pending while the job is still ours."""
        self.lease.close()
