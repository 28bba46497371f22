"""The lease a worker holds on the job it runs: a heartbeat, writes guarded by ownership, and the answer
to the trainer's `control()` poll.

Owned means the job's row says `status = 'running' AND worker_id = <this worker>`. Every write is one
transaction that starts with that guarded UPDATE, which also sets `heartbeat_at` (the reaper requeues a
job whose heartbeat is older than the lease). When the UPDATE matches no row, the job is no longer ours:
the user cancelled it, or the reaper requeued it and another worker took it. The lease is then lost for
good: no write runs again, and `control()` answers "cancel", so the trainer stops within a step.

What is read, and how often:
- the DB: a thread beats every `heartbeat_interval_s` (so the lease holds through model loading and long
  steps that never poll), reading the row's pause request in the same transaction; every write beats too.
- Redis: the control key (cancel or pause, set by the API), at most every CONTROL_POLL_S however often the
  trainer polls. Redis down means "continue": a cancel still arrives through the guard, a pause through the
  row's pause request.

Every DB access retries through dropped connections for up to `db_retry_s` (worker/dbretry.py).
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.models import Job, JobStatus, now
from core.queues import control_key
from worker.dbretry import retrying
from worker.engine.callbacks import Control

log = logging.getLogger(__name__)

# Set when the worker is asked to shut down (Ctrl-C of `sppo run`, SIGTERM of a container): the running
# job checkpoints as for a pause, then goes back to the queue instead of to `paused`.
SHUTDOWN = threading.Event()

CONTROL_POLL_S = 0.5  # the trainer may poll control() per generated token; Redis is read at most this often


class JobLease:
    """One worker's hold on one claimed job, from the claim until `close()`; thread-safe."""

    def __init__(
        self,
        *,
        job_id: str,
        worker_id: str,
        sessions: sessionmaker[Session],
        redis_client: "redis.Redis",
        heartbeat_interval_s: float,
        db_retry_s: float,
    ) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self._sessions = sessions
        self._redis = redis_client
        self._db_retry_s = db_retry_s
        self._lost = threading.Event()
        self._stopped = threading.Event()
        self._pause_requested = False
        self._last_control: tuple[float, Control] = (0.0, "continue")
        self._heartbeat = threading.Thread(
            target=self._beat, args=(heartbeat_interval_s,), name=f"heartbeat-{job_id}", daemon=True
        )
        self._heartbeat.start()

    @property
    def owned(self) -> list[ColumnElement[bool]]:
        """The WHERE clause of every write: the job is still running, and on this worker."""
        return [Job.id == self.job_id, Job.status == JobStatus.running, Job.worker_id == self.worker_id]

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def pause_requested(self) -> bool:
        """The job row's pause request, as the last heartbeat read it."""
        return self._pause_requested

    def write(self, work: Callable[[Session], object], **columns: Any) -> bool:
        """The heartbeat (plus `columns` of the job row) and `work` in one transaction, only while the job
        is ours; False (and nothing written) once the lease is lost."""
        if self.lost:
            return False

        def attempt() -> bool:
            with self._sessions() as session:
                result = session.execute(update(Job).where(*self.owned).values(heartbeat_at=now(), **columns))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    session.rollback()
                    return False
                work(session)
                session.commit()
            return True

        if retrying(attempt, what=f"job {self.job_id}", deadline_s=self._db_retry_s):
            return True
        if not self._lost.is_set():
            log.warning("job %s is no longer running on %s; stopping", self.job_id, self.worker_id)
        self._lost.set()
        return False

    def write_after_cancel(self, work: Callable[[Session], object]) -> None:
        """`work` once the user cancelled the job while this worker ran it. A cancelled job is final, so
        this cannot overwrite another worker's rows (a job the reaper took over is not `cancelled`)."""

        def attempt() -> None:
            with self._sessions() as session:
                mine = session.scalar(
                    select(Job.id).where(
                        Job.id == self.job_id,
                        Job.status == JobStatus.cancelled,
                        Job.worker_id == self.worker_id,
                    )
                )
                if mine is not None:
                    work(session)
                    session.commit()

        retrying(attempt, what=f"job {self.job_id}", deadline_s=self._db_retry_s)

    def control(self) -> Control:
        """Cancel once the lease is lost; pause on shutdown or a pause request (the row's or Redis')."""
        if self.lost:
            return "cancel"
        if SHUTDOWN.is_set() or self._pause_requested:
            return "pause"
        last_read, answer = self._last_control
        if time.monotonic() - last_read < CONTROL_POLL_S:
            return answer
        answer = self._read_control_key()
        self._last_control = (time.monotonic(), answer)
        return answer

    def close(self) -> None:
        """Stop the heartbeat; the row stays as it is (the caller records the outcome)."""
        self._stopped.set()
        self._heartbeat.join(timeout=10)

    def _read_control_key(self) -> Control:
        try:
            value = self._redis.get(control_key(self.job_id))
        except redis.RedisError:  # Redis down: keep going; a cancel still reaches us through the DB guard
            return "continue"
        if value == b"cancel":
            return "cancel"
        if value == b"pause":
            return "pause"
        return "continue"

    def _beat(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                if not self.write(self._read_pause_request):
                    return
            except Exception:  # a DB blip: the next beat tries again; the lease is several beats long
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def _read_pause_request(self, session: Session) -> None:
        # The API records a pause in the row as well as in Redis: Redis may be down or have lost the key.
        requested = session.scalar(select(Job.pause_requested_at).where(Job.id == self.job_id))
        self._pause_requested = requested is not None
