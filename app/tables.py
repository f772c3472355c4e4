"""The ORM tables (SQLAlchemy 2, typed declarative mapping).

The schema is owned by Alembic (``migrations/versions``); this module is its source of truth for
``alembic revision --autogenerate`` and ``alembic check``. Conventions:

* ids are UUID4 strings (``String(36)``), generated in Python by :func:`new_id`;
* every timestamp is a timezone-aware UTC ``datetime`` (:class:`UTCDateTime`): naive values are
  refused on the way in, and values come back in UTC on both PostgreSQL and SQLite;
* JSON columns use the portable ``sqlalchemy.JSON`` (``json`` on PostgreSQL, text on SQLite).
  Mutating a loaded dict in place is not tracked: assign a new value instead;
* constraint and index names follow :data:`NAMING_CONVENTION`, so migrations can name them on
  every back-end.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ACTIVE_STATUSES",
    "DATASET_FORMATS",
    "JOB_STATUSES",
    "NAMING_CONVENTION",
    "STAGES",
    "TERMINAL_STATUSES",
    "ApiKey",
    "Base",
    "Dataset",
    "Job",
    "JobDataset",
    "PairMetric",
    "Recommendation",
    "TaskResult",
    "UTCDateTime",
    "new_id",
    "utcnow",
]

JOB_STATUSES: Final = ("queued", "running", "succeeded", "failed", "cancelled")
"""Every job status, in lifecycle order."""
ACTIVE_STATUSES: Final = ("queued", "running")
"""Statuses of a job that may still change (and that hold its datasets)."""
TERMINAL_STATUSES: Final = ("succeeded", "failed", "cancelled")
"""Statuses a job never leaves."""
STAGES: Final = (
    "prepare",
    "finetune",
    "similarity",
    "alignment",
    "grouping",
    "verification",
    "done",
)
"""Pipeline stages, in order; ``jobs.stage`` is one of them (or NULL before the first)."""
DATASET_FORMATS: Final = ("csv", "jsonl", "parquet")
"""File formats an uploaded dataset may have."""

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A fresh UUID4, as the 36-character string stored in every ``id`` column."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts and only returns aware UTC datetimes.

    PostgreSQL stores ``timestamptz`` and returns it in the session's time zone; SQLite stores
    text and drops the offset. This type converts to UTC before binding (and strips the offset
    for SQLite, whose text must compare correctly as a string) and marks results as UTC, so the
    application sees the same values on both. A naive datetime raises ``ValueError``: its meaning
    would depend on the server's time zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base: shared metadata (with the naming convention) and type map."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads it)


class ApiKey(Base):
    """An API key. Only the SHA-256 of the key is stored; the plaintext is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(255))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r})"


class Dataset(Base):
    """An uploaded dataset: its file in the artifact store and what was learned reading it."""

    __tablename__ = "datasets"
    __table_args__ = (
        CheckConstraint(f"format IN ({_in(DATASET_FORMATS)})", name="format"),
        # Serves both owner lookups (leading column) and the newest-first listing.
        Index("ix_datasets_owner_created_at_id", "owner", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[str]] = mapped_column(JSON)
    label_summary: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON)
    artifact_path: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, owner={self.owner!r}, filename={self.filename!r})"


class Job(Base):
    """One analysis job: the validated request, its lifecycle, and progress reporting."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(JOB_STATUSES)})", name="status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        UniqueConstraint("owner", "idempotency_key"),
        # The listing query: WHERE owner = ? ORDER BY created_at DESC, id DESC (keyset).
        # Its leading column also serves every other owner-scoped lookup.
        Index("ix_jobs_owner_created_at_id", "owner", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]

    datasets: Mapped[list[Dataset]] = relationship(
        secondary="job_datasets", viewonly=True, lazy="selectin", order_by="Dataset.id"
    )
    """The job's datasets (read-only; links are written as :class:`JobDataset` rows)."""

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def dataset_ids(self) -> list[str]:
        return [d.id for d in self.datasets]

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, owner={self.owner!r}, status={self.status!r})"


class JobDataset(Base):
    """Link: a job reads a dataset. Deleting the job removes its links; a linked dataset
    cannot be deleted (RESTRICT) until the repository has removed the links of finished jobs."""

    __tablename__ = "job_datasets"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("datasets.id", ondelete="RESTRICT"), primary_key=True, index=True
    )


class TaskResult(Base):
    """Stage 1 (and verification) output: one fine-tuned model for one task and seed."""

    __tablename__ = "task_results"
    __table_args__ = (UniqueConstraint("job_id", "task", "seed"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(255))
    seed: Mapped[int] = mapped_column(Integer)
    macro_f1: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Everything else: loss curve, classes, per-class counts, ..."""
    weights_path: Mapped[str | None] = mapped_column(String)
    reps_path: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PairMetric(Base):
    """Stages 2 and 3 output for one pair of tasks (CKA, gradient alignment, TAG affinity)."""

    __tablename__ = "pair_metrics"
    __table_args__ = (UniqueConstraint("job_id", "task_a", "task_b"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    task_a: Mapped[str] = mapped_column(String(255))
    task_b: Mapped[str] = mapped_column(String(255))
    cka_per_layer: Mapped[list[float]] = mapped_column(JSON)
    cka_min: Mapped[float] = mapped_column(Float)
    cka_min_layer: Mapped[int] = mapped_column(Integer)
    cka_mean: Mapped[float] = mapped_column(Float)
    grad_cosine: Mapped[float] = mapped_column(Float)
    grad_cosine_per_layer: Mapped[list[float]] = mapped_column(JSON)
    conflict_rate: Mapped[float] = mapped_column(Float)
    tag_ab: Mapped[float] = mapped_column(Float)
    """TAG lookahead affinity of task_a's step on task_b's loss."""
    tag_ba: Mapped[float] = mapped_column(Float)
    """TAG lookahead affinity of task_b's step on task_a's loss."""


class Recommendation(Base):
    """The job's final recommendation (the ``models.schema.Recommendation`` JSON)."""

    __tablename__ = "recommendations"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Calibration(Base):
    """A fitted ``p_match`` model (``models.calibration.Calibration`` as JSON), newest in force.

    Written by ``taskgrouper calibrate`` from the verified jobs; workers read the newest one when
    they judge a job's groups.
    """

    __tablename__ = "calibrations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_groups: Mapped[int] = mapped_column(Integer)
    n_jobs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
