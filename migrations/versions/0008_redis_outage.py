"""Redis outages: jobs.pause_requested_at (a pause survives one) and evaluations.dispatched_at (when the
task was last sent, so the reaper can send it again after the broker lost it)

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("pause_requested_at", sa.BigInteger(), nullable=True))
    # NULL for evaluations created before: the reaper takes their creation time instead.
    op.add_column("evaluations", sa.Column("dispatched_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("dispatched_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pause_requested_at")
