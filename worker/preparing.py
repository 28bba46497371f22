"""Makes a worker's model preparation visible on the job: the sppo-tiny fixture, when it is not shipped or
cached, is built by a supervised warm-up that takes minutes on a CPU; its progress lines become the job's
`status_detail` ("preparing sppo-tiny: step N, accuracy X") and, now and then, an event."""

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator

ENGINE_LOGGER = "worker.engine"
EVENT_EVERY_S = 30.0  # status_detail follows every line; the event list gets one line per this period
_PROGRESS = re.compile(r"step (\d+).*?accuracy ([\d.]+)")


class _Forward(logging.Handler):
    def __init__(self, model: str, report: Callable[[str, bool], None]) -> None:
        super().__init__(logging.INFO)
        self.model, self.report = model, report
        self.last_event = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if "fixture" not in record.name:
            return
        message = record.getMessage()
        found = _PROGRESS.search(message)
        text = f"preparing {self.model}: " + (
            f"step {found[1]}, accuracy {float(found[2]):.3f}" if found else message[:200]
        )
        due = time.monotonic() - self.last_event >= EVENT_EVERY_S
        if due:
            self.last_event = time.monotonic()
        try:
            self.report(text, due)
        except Exception:  # progress reporting must never break the build itself
            logging.getLogger(__name__).warning("could not report fixture progress", exc_info=True)


@contextlib.contextmanager
def reporting_preparation(model: str, report: Callable[[str, bool], None]) -> Iterator[None]:
    """Within the block, the engine's fixture-build log lines call `report(text, as_event)`."""
    engine = logging.getLogger(ENGINE_LOGGER)
    handler, level = _Forward(model, report), engine.level
    engine.addHandler(handler)
    if engine.getEffectiveLevel() > logging.INFO:
        engine.setLevel(logging.INFO)
    try:
        yield
    finally:
        engine.removeHandler(handler)
        engine.setLevel(level)
