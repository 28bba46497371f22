"""Engines, sessions and migrations. Shared by the API, the CLI and the Celery worker."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

if TYPE_CHECKING:
    from alembic.config import Config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets the API read while a worker writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _ensure_sqlite_dir(url: str) -> bool:
    """Create the directory of a SQLite database file; False for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    Path(parsed.database or ".").parent.mkdir(parents=True, exist_ok=True)
    return True


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets its parent directory created and the pragmas above."""
    if _ensure_sqlite_dir(url):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    settings = get_settings()
    # Pre-ping replaces a connection the server dropped before it is used; the bounded pool wait turns an
    # exhausted pool into a 503 (see app/errors.py) instead of a thread blocked for half a minute.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=1800,
    )


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' database)."""
    return create_db_engine(url or get_settings().db_url)


@lru_cache
def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for the CLI and the worker).

    Service functions may commit inside it (they do, for the API); this commits whatever is left.
    """
    with get_sessionmaker(url)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> "Config":
    """Alembic's config without alembic.ini: the scripts are the installed `migrations` package, so this
    works from a checkout and from site-packages alike (the ini only serves the `alembic` command line)."""
    from importlib.util import find_spec

    from alembic.config import Config

    spec = find_spec("migrations")
    if spec is None or spec.origin is None:
        raise RuntimeError("the `migrations` package is not installed; reinstall sppo-service")
    config = Config()
    config.set_main_option("script_location", str(Path(spec.origin).parent))
    config.attributes["database_url"] = url
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply migrations programmatically (what `alembic upgrade head` does), used by `sppo run` and tests."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
