"""files.max_prompt_chars: the longest prompt of a file, checked against a model's context at create time

Revision ID: 0007
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for files uploaded before: their prompts are not checked.
    op.add_column("files", sa.Column("max_prompt_chars", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "max_prompt_chars")
