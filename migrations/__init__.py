"""Alembic migrations, shipped inside the wheel so an installed `sppo migrate` finds them without a checkout."""
