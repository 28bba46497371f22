"""The trainer's callbacks for a job with experiment trackers: the job's reporter, then its trackers.

The reporter is the record and always comes first. A tracker's calls go, in order, to its own thread (a
lane), so the training loop only enqueues: a slow or unreachable server never slows a step. A tracker that
raises, falls `QUEUE_LIMIT` calls behind or does not finish in time is off for the rest of the run, and
the job gets one warning event and an alarm; the job itself neither fails nor waits for it (beyond
`finish_timeout_s` at the end, so a finished run's last steps reach the tracker).
"""

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.engine.callbacks import Control, Level, StartInfo, TrainerCallbacks
from worker.reporting import JobReporter
from worker.trackers import Outcome, Tracker

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000  # calls a tracker may be behind the training before it is turned off
_MAX_REASON = 300


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc) else type(exc).__name__
    return text[:_MAX_REASON]


class _Lane:
    """One tracker's calls, in order, on a daemon thread of its own; `failure` says why it stopped."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.failure: str | None = None
        self.reported = False
        self._calls: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._run, name=f"tracker-{tracker.type}", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        if self.failure is not None:
            return
        try:
            self._calls.put_nowait(call)
        except queue.Full:
            self.failure = f"it fell {QUEUE_LIMIT} calls behind the training (its server is too slow)"

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            if self.failure is not None:
                continue
            try:
                call()
            except Exception as exc:  # anything, from a missing package to a refused key
                self.failure = _reason(exc)
                log.warning("tracker %s failed", self.tracker.name, exc_info=True)
        if self.failure is not None:  # let go of what a half-working client holds (a W&B service process)
            with contextlib.suppress(Exception):
                self.tracker.finish("failed")

    def close(self, outcome: Outcome, deadline: float) -> None:
        """Finish the tracker's run (when it still works) and wait for its thread until `deadline`."""
        self.submit(functools.partial(self.tracker.finish, outcome))
        with contextlib.suppress(queue.Full):
            self._calls.put(None, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() and self.failure is None:
            self.failure = "it did not finish the run in time; its last steps may be missing"


class TrackedCallbacks(TrainerCallbacks):
    """Forwards every callback to the reporter, and metrics, samples and the run's end to the trackers."""

    def __init__(self, reporter: JobReporter, trackers: list[Tracker], *, finish_timeout_s: float) -> None:
        self.reporter = reporter
        self._lanes = [_Lane(tracker) for tracker in trackers]
        self._finish_timeout_s = finish_timeout_s

    def _each(self, call: Callable[[Tracker], Callable[[], None]]) -> None:
        for lane in self._lanes:
            lane.submit(call(lane.tracker))
        self._report_failures()

    def _report_failures(self) -> None:
        for lane in self._lanes:
            if lane.failure is None or lane.reported:
                continue
            lane.reported = True
            step = self.reporter.current_step
            message = (
                f"{lane.tracker.name} logging stopped for the rest of the run: {lane.failure}. "
                "The job goes on; its metrics are in the service as always"
            )
            for alarm in self.reporter.alarms.tracker_failed(step, lane.tracker.type, message):
                self.reporter.event(
                    f"Alarm: {message}", level="warn", data={"alarm": alarm["code"], "step": step}
                )

    def close(self, outcome: Outcome) -> None:
        """End every tracker's run, waiting at most `finish_timeout_s` for all of them together."""
        deadline = time.monotonic() + self._finish_timeout_s
        for lane in self._lanes:
            lane.close(outcome, deadline)
        self._report_failures()

    # --- TrainerCallbacks ------------------------------------------------------------------------------

    def on_start(self, info: StartInfo) -> None:
        self.reporter.on_start(info)
        self._each(lambda tracker: tracker.start)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.reporter.on_step(step, metrics)
        values = {name: float(value) for name, value in metrics.items()}
        self._each(lambda tracker: functools.partial(tracker.log_step, step, values))

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self.reporter.on_samples(step, samples)
        self._each(lambda tracker: functools.partial(tracker.log_samples, step, list(samples)))

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        self.reporter.on_event(level, message, data)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.reporter.on_checkpoint(step, path, metrics)

    def on_evaluation(self, step: int, scores: dict[str, float]) -> None:
        # the scores reach the trackers with their step's metrics (on_step follows)
        self.reporter.on_evaluation(step, scores)

    def control(self) -> Control:
        return self.reporter.control()
