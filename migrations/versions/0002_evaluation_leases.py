"""evaluation leases: attempts, heartbeat and worker, so a lost evaluation is reaped like a job

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("max_attempts", sa.BigInteger(), server_default="3", nullable=False))
        batch_op.add_column(sa.Column("heartbeat_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("worker_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("started_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        for column in ("started_at", "worker_id", "heartbeat_at", "max_attempts", "attempt"):
            batch_op.drop_column(column)
