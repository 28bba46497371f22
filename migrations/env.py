"""Alembic environment: the URL comes from core.settings (or a caller's `database_url` attribute)."""

from logging.config import fileConfig

from alembic import context

from core.db import create_db_engine
from core.models import Base
from core.settings import get_settings

config = context.config
if config.config_file_name is not None and not config.attributes.get("database_url"):
    # Only the alembic command line configures logging; programmatic callers keep their own.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.attributes.get("database_url") or get_settings().db_url
target_metadata = Base.metadata
is_sqlite = url.startswith("sqlite")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=is_sqlite)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_db_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=is_sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
