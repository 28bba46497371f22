"""Progress-aware retries: jobs.worker_losses (every lost worker, the runaway cap counts them) and
jobs.run_start_step (the checkpoint step the current run started from: a loss after a newer checkpoint
costs no attempt)

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("worker_losses", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("run_start_step", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_start_step")
        batch.drop_column("worker_losses")
