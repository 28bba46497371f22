"""Alembic is the schema authority: upgrade creates it, `alembic check` sees no drift, downgrade drops it."""

import sqlalchemy as sa
from alembic import command

from core.db import alembic_config, create_db_engine, upgrade_database
from core.models import Base


def test_upgrade_check_downgrade(empty_db_url: str) -> None:
    upgrade_database(empty_db_url)
    config = alembic_config(empty_db_url)
    command.check(config)  # raises when the models and the migrations disagree

    engine = create_db_engine(empty_db_url)
    tables = set(sa.inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables

    command.downgrade(config, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
