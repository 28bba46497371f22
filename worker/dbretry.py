"""Database work that survives a dropped connection: a flaky database delays a job, it never fails it.

A PostgreSQL restart, failover or `pg_terminate_backend` ends the worker's connections; SQLAlchemy then
raises `OperationalError` (psycopg's AdminShutdown, "server closed the connection") for the transaction
in flight, and the pool's pre-ping replaces the dead idle connections on the next checkout. Everything
the worker writes is a guarded UPDATE or an upsert keyed by step, so running the same unit of work again
after an error is safe; `retrying` does that with exponential backoff until its deadline.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


def is_connection_error(exc: BaseException) -> bool:
    """An error of the connection, not of the statement: the same work may succeed on a new one."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def retrying(work: Callable[[], T], *, what: str, deadline_s: float) -> T:
    """`work()`, run again after a connection error (backoff 0.05 s doubling to 2 s) for up to `deadline_s`.

    `work` must open its own session, so that each try starts on a fresh connection from the pool.
    """
    give_up = time.monotonic() + deadline_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not is_connection_error(exc) or time.monotonic() + delay > give_up:
                raise
            log.warning("%s: database connection lost (%s); retrying in %.2fs", what, exc.orig, delay)
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
