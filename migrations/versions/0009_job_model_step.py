"""jobs.fine_tuned_model_step: the step whose checkpoint is the fine-tuned model (model_selection)

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("fine_tuned_model_step", sa.BigInteger(), nullable=True))
    # before, a job's model was always its last step
    op.execute("UPDATE jobs SET fine_tuned_model_step = current_step WHERE fine_tuned_model IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fine_tuned_model_step")
