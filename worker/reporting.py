"""The trainer's callbacks for a job: live metrics in Redis, metric points, checkpoints, events and progress
in the DB, a heartbeat, and the answer to the trainer's `control()` poll (continue, cancel or pause).

Every DB write starts with the same guarded UPDATE (`status = 'running' AND worker_id = me`), which is
also the heartbeat. When it matches no row, the job is no longer this worker's (the user cancelled it,
or the reaper requeued it and another worker took it): the reporter writes nothing more and `control()`
answers "cancel", so the trainer stops within a step. Metric points are upserts keyed (job_id, step): a
step re-run after a crash replaces its row, so every step is recorded exactly once.

Exactly once whatever instant the worker dies at: metric points reach the DB in batches, so a kill
between the engine renaming a checkpoint into place and the next flush would leave the checkpoint's
steps unrecorded (the resumed run starts after them). So a run's start reconciles the DB with the
checkpoint it resumes from: steps up to it come from the engine's metrics log when missing, rows after
it are dropped (those steps run again), and checkpoint rows follow the checkpoints on disk. Every write
retries through dropped DB connections (worker/dbretry.py).
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.lifecycle import add_event
from app.models import Job, JobStatus, MetricPoint, now
from app.queues import control_key
from app.storage import ArtifactStore
from app.streams import STREAM_MAXLEN, encode_step
from worker.alarms import AlarmBook
from worker.artifacts import publish_checkpoints
from worker.dbretry import retrying
from worker.engine.callbacks import Control, Level, StartInfo, TrainerCallbacks
from worker.engine.checkpoint import crash_point, list_checkpoints, step_metrics
from worker.livestream import Records, drop_steps_after, publish_step
from worker.records import (
    checkpoint_row,
    drop_removed_checkpoints,
    reconcile,
    replace_samples,
    upsert_checkpoint,
    upsert_points,
)

log = logging.getLogger(__name__)

# Set when the worker is asked to shut down (Ctrl-C of `sppo run`, SIGTERM of a container): the running
# job checkpoints as for a pause, then goes back to the queue instead of to `paused`.
SHUTDOWN = threading.Event()

FLUSH_EVERY_S = 2.0  # metric points reach the DB at most this late (and at every checkpoint and the end)
CONTROL_POLL_S = 0.5  # the trainer may poll control() per generated token; Redis is read at most this often
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
        self.db_retry_s = db_retry_s
        self.worker_id = worker_id
        self.model_name = model_name  # the fine-tuned model name; checkpoints are named after it
        self.store = store  # where checkpoints are published; its data dir holds the run directory
        self._sessions = sessions
        self._redis = redis_client
        self._lock = threading.Lock()
        self._lost = threading.Event()
        self._stopped = threading.Event()
        self._pending: dict[int, dict[str, float]] = {}
        self._pending_samples: dict[int, list[dict[str, Any]]] = {}  # flushed with the points
        self._last_flush = time.monotonic()
        self._last_control: tuple[float, Control] = (0.0, "continue")
        self.pause_requested = False  # the job row's pause request, read with every heartbeat
        self._run_started = time.monotonic()
        self.start_step = 0
        self.total_steps: int | None = None
        self.current_step = 0
        self.trained_tokens: int | None = None  # the engine's cumulative perf/tokens, once a step reports it
        self.last_eval: dict[str, float] = {}
        self.alarms = alarms or AlarmBook(window=5)
        self._heartbeat = threading.Thread(
            target=self._beat, args=(heartbeat_interval_s,), name=f"heartbeat-{job_id}", daemon=True
        )
        self._heartbeat.start()

    # --- guarded DB writes -----------------------------------------------------------------------------

    @property
    def owned(self) -> list[ColumnElement[bool]]:
        """The WHERE clause of every write: the job is still running, and on this worker."""
        return [Job.id == self.job_id, Job.status == JobStatus.running, Job.worker_id == self.worker_id]

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _write(self, work: Callable[[Session], object], **progress: Any) -> bool:
        """Heartbeat (plus `progress` columns) and `work` in one transaction, only while the job is ours."""
        if self.lost:
            return False

        def attempt() -> bool:
            with self._sessions() as session:
                values = {"heartbeat_at": now(), **progress}
                result = session.execute(update(Job).where(*self.owned).values(**values))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    session.rollback()
                    return False
                work(session)
                session.commit()
            return True

        if retrying(attempt, what=f"job {self.job_id}", deadline_s=self.db_retry_s):
            return True
        if not self._lost.is_set():
            log.warning("job %s is no longer running on %s; stopping", self.job_id, self.worker_id)
        self._lost.set()
        return False

    def _beat(self, interval: float) -> None:
        # A thread, so the lease holds through model loading and long steps that never poll control().
        while not self._stopped.wait(interval):
            try:
                if not self._write(self._read_pause_request):
                    return
            except Exception:  # a DB blip: the next beat tries again; the lease is several beats long
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def _read_pause_request(self, session: Session) -> None:
        # The API records a pause in the row as well as in Redis: Redis may be down or have lost the key.
        requested = session.scalar(select(Job.pause_requested_at).where(Job.id == self.job_id))
        self.pause_requested = requested is not None

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
            written = self._write(lambda session: self._record(session, pending, samples), **self._progress())
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
        """Keep the steps this worker finished before the user's cancel reached it (the job is final, so
        this cannot overwrite another worker's rows; a job taken over by the reaper is not `cancelled`)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            samples, self._pending_samples = self._pending_samples, {}

        def attempt() -> None:
            with self._sessions() as session:
                mine = session.scalar(
                    select(Job.id).where(
                        Job.id == self.job_id,
                        Job.status == JobStatus.cancelled,
                        Job.worker_id == self.worker_id,
                    )
                )
                if mine is not None and (pending or samples):
                    self._record(session, pending, samples)
                    session.commit()

        retrying(attempt, what=f"job {self.job_id}", deadline_s=self.db_retry_s)

    def event(self, message: str, *, level: str = "info", type: str = "message", data: Any = None) -> None:
        self._write(
            lambda session: add_event(
                session, job_id=self.job_id, message=message, level=level, type=type, data=data
            )
        )

    def detail(self, text: str | None, *, event: bool = False) -> None:
        """What the worker is doing before training starts (`status_detail`); optionally as an event too."""
        work: Callable[[Session], object] = lambda _session: None  # noqa: E731
        if event and text is not None:
            work = lambda session: add_event(session, job_id=self.job_id, message=text)  # noqa: E731
        self._write(work, status_detail=text)

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
            self._write(record, alarms=self.alarms.public())

    def _earlier_steps(self, step: int) -> Records:
        """Stream records of the steps before `step`: the DB's, then those not flushed yet."""
        try:
            with self._sessions() as session:
                stored = session.execute(
                    select(MetricPoint.step, MetricPoint.metrics, MetricPoint.created_at)
                    .where(MetricPoint.job_id == self.job_id, MetricPoint.step < step)
                    .order_by(MetricPoint.step.desc())
                    .limit(STREAM_MAXLEN)
                ).all()
        except SQLAlchemyError:  # the live view is best effort: never stop training for it
            log.warning("could not read the steps of job %s to repair its stream", self.job_id)
            stored = []
        points = {s: (m, created) for s, m, created in stored}
        with self._lock:
            points |= {s: (m, now()) for s, m in self._pending.items() if s < step}
        return [encode_step(s, m, created) for s, (m, created) in sorted(points.items())]

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

        self._write(
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

        self._write(record)
        crash_point("report.recorded", step)

    def control(self) -> Control:
        if self.lost:
            return "cancel"
        if SHUTDOWN.is_set() or self.pause_requested:
            return "pause"
        last_read, answer = self._last_control
        if time.monotonic() - last_read < CONTROL_POLL_S:
            return answer
        try:
            value = self._redis.get(control_key(self.job_id))
        except redis.RedisError:  # Redis down: keep going; a cancel still reaches us through the DB guard
            value = None
        answer = "continue"
        if value == b"cancel":
            answer = "cancel"
        elif value == b"pause":
            answer = "pause"
        self._last_control = (time.monotonic(), answer)
        if answer == "continue" and time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()
        return "cancel" if self.lost else answer

    def close(self) -> None:
        """Stop the heartbeat; the caller flushes what is pending while the job is still ours."""
        self._stopped.set()
        self._heartbeat.join(timeout=10)
