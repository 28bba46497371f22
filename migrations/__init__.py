"""Alembic migrations, shipped in the wheel so an installed `sppo migrate` finds them without a checkout."""
