"""initial schema

Tables: api_keys, datasets, jobs, job_datasets, task_results, pair_metrics, recommendations.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 22:01:23.496535+00:00

Generated with ``alembic revision --autogenerate`` against SQLite, then reviewed so it runs on
PostgreSQL and SQLite alike:

* ``jobs.cancel_requested`` defaults to ``sa.false()`` (rendered per dialect: ``false`` on
  PostgreSQL, ``0`` on SQLite); the generated ``sa.text("0")`` fails on a PostgreSQL boolean;
* indexes are created with plain ``op.create_index`` (batch mode is only needed to ALTER
  existing SQLite tables);
* timestamps are ``sa.DateTime(timezone=True)``: ``app.tables.UTCDateTime`` only adds UTC
  conversion in Python, and migrations never import ``app``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("label_summary", sa.JSON(), nullable=False),
        sa.Column("artifact_path", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "format IN ('csv', 'jsonl', 'parquet')", name=op.f("ck_datasets_format")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_index(
        "ix_datasets_owner_created_at_id", "datasets", ["owner", "created_at", "id"], unique=False
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_jobs_progress")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("owner", "idempotency_key", name=op.f("uq_jobs_owner_idempotency_key")),
    )
    op.create_index(
        "ix_jobs_owner_created_at_id", "jobs", ["owner", "created_at", "id"], unique=False
    )
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"], unique=False)
    op.create_table(
        "job_datasets",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_job_datasets_dataset_id_datasets"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_datasets_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "dataset_id", name=op.f("pk_job_datasets")),
    )
    op.create_index(
        op.f("ix_job_datasets_dataset_id"), "job_datasets", ["dataset_id"], unique=False
    )
    op.create_table(
        "pair_metrics",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("task_a", sa.String(length=255), nullable=False),
        sa.Column("task_b", sa.String(length=255), nullable=False),
        sa.Column("cka_per_layer", sa.JSON(), nullable=False),
        sa.Column("cka_min", sa.Float(), nullable=False),
        sa.Column("cka_min_layer", sa.Integer(), nullable=False),
        sa.Column("cka_mean", sa.Float(), nullable=False),
        sa.Column("grad_cosine", sa.Float(), nullable=False),
        sa.Column("grad_cosine_per_layer", sa.JSON(), nullable=False),
        sa.Column("conflict_rate", sa.Float(), nullable=False),
        sa.Column("tag_ab", sa.Float(), nullable=False),
        sa.Column("tag_ba", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_pair_metrics_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pair_metrics")),
        sa.UniqueConstraint(
            "job_id", "task_a", "task_b", name=op.f("uq_pair_metrics_job_id_task_a_task_b")
        ),
    )
    op.create_table(
        "recommendations",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_recommendations_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_recommendations")),
    )
    op.create_table(
        "task_results",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("task", sa.String(length=255), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("macro_f1", sa.Float(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("weights_path", sa.String(), nullable=True),
        sa.Column("reps_path", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_task_results_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_results")),
        sa.UniqueConstraint(
            "job_id", "task", "seed", name=op.f("uq_task_results_job_id_task_seed")
        ),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("task_results")
    op.drop_table("recommendations")
    op.drop_table("pair_metrics")
    op.drop_index(op.f("ix_job_datasets_dataset_id"), table_name="job_datasets")
    op.drop_table("job_datasets")
    op.drop_index(op.f("ix_jobs_status"), table_name="jobs")
    op.drop_index("ix_jobs_owner_created_at_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_datasets_owner_created_at_id", table_name="datasets")
    op.drop_table("datasets")
    op.drop_table("api_keys")
