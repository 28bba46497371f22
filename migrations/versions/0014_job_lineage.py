"""jobs.base_model and jobs.parent_model: the lineage of a job that continues a fine-tuned model

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("base_model", sa.String(256), nullable=True))
    op.add_column("jobs", sa.Column("parent_model", sa.String(256), nullable=True))
    # before, every job trained a fresh adapter on the model it named
    op.execute("UPDATE jobs SET base_model = model")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("base_model", existing_type=sa.String(256), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parent_model")
        batch.drop_column("base_model")
