"""The fixture build's progress lines become the job's status detail (and, now and then, an event)."""

import logging

from worker.preparing import reporting_preparation


def test_fixture_progress_lines_are_reported_as_preparing_detail() -> None:
    seen: list[tuple[str, bool]] = []
    builder = logging.getLogger("worker.engine.fixtures")
    with reporting_preparation("sppo-tiny", lambda text, as_event: seen.append((text, as_event))):
        builder.info("fixture warm-up step %d loss %.3f greedy accuracy %.3f", 240, 0.812, 0.125)
        builder.info("fixture warm-up step %d loss %.3f greedy accuracy %.3f", 260, 0.801, 0.16)
        logging.getLogger("worker.engine.trainer").info("not about the fixture")
    # after the block: not reported
    builder.info("fixture warm-up step %d loss %.3f greedy accuracy %.3f", 280, 0.8, 0.2)
    assert seen == [
        ("preparing sppo-tiny: step 240, accuracy 0.125", True),  # the first line is also an event
        ("preparing sppo-tiny: step 260, accuracy 0.160", False),  # then at most one event per 30 s
    ]
