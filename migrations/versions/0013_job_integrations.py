"""jobs.integrations (a job's experiment trackers) and jobs.sealed_secrets (their keys, sealed)

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("integrations", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("sealed_secrets", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sealed_secrets")
        batch.drop_column("integrations")
