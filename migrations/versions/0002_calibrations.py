"""calibrations: fitted p_match models (``taskgrouper calibrate``)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:48:57.208160+00:00

Generated with ``alembic revision --autogenerate``; the index is created with plain
``op.create_index`` as in 0001 (a new table needs no batch mode on SQLite).
Migrations are frozen history: use plain ``sa`` types here, never import ``app``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("n_groups", sa.Integer(), nullable=False),
        sa.Column("n_jobs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibrations")),
    )
    op.create_index(
        op.f("ix_calibrations_created_at"), "calibrations", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_calibrations_created_at"), table_name="calibrations")
    op.drop_table("calibrations")
