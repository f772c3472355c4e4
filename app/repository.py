"""Every query the service runs: routes and tasks call these functions and never write SQL.

Conventions:

* Every argument is keyword-only; ``session`` is a :class:`sqlalchemy.orm.Session`.
* **No function commits.** Each one flushes its writes (so constraint violations surface at the
  call and generated values are readable) and leaves ``session.commit()`` to the caller, who
  owns the unit of work. A few functions use a SAVEPOINT internally (``create_job``,
  ``save_task_result``, ``save_recommendation``) so that a uniqueness race is absorbed without
  spoiling the caller's transaction; those savepoints are released, never committed.
* Owner-scoped readers (``get_job``, ``get_dataset``, ``get_recommendation``, ...) return
  ``None`` for another owner's row, exactly as for a missing one: callers answer 404 either way.
  ``load_job`` and the other worker-side functions are unscoped.
* Job status changes are single conditional ``UPDATE`` statements (``... WHERE status IN
  (...)``), so a worker and the API racing on one job cannot both win: on PostgreSQL the
  second UPDATE re-checks its condition after the first commits, on SQLite writers are
  serialised. Cached ``Job`` objects in the session are expired after each such update.
* Timestamps are timezone-aware UTC; functions that stamp time accept ``now`` for tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Executable,
    Row,
    bindparam,
    case,
    delete,
    event,
    exists,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload
from sqlalchemy.orm.util import identity_key

from app.caches import forget_api_keys
from app.tables import (
    ACTIVE_STATUSES,
    DATASET_FORMATS,
    JOB_STATUSES,
    STAGES,
    TERMINAL_STATUSES,
    ApiKey,
    Calibration,
    Dataset,
    Job,
    JobDataset,
    PairMetric,
    Recommendation,
    TaskResult,
    UTCDateTime,
    new_id,
    utcnow,
)

__all__ = [
    "API_KEY_PREFIX",
    "MAX_PAGE_SIZE",
    "PAIR_METRIC_FIELDS",
    "DeleteResult",
    "IdempotencyKeyReused",
    "UnknownDatasets",
    "authenticate",
    "claim_analysis",
    "count_active_jobs",
    "create_api_key",
    "create_dataset",
    "create_job",
    "dataset_in_use",
    "decode_cursor",
    "delete_dataset",
    "encode_cursor",
    "find_job_by_idempotency_key",
    "finish_job",
    "get_dataset",
    "get_job",
    "get_pair_metrics",
    "get_recommendation",
    "get_task_results",
    "hash_api_key",
    "heartbeat",
    "is_cancel_requested",
    "list_api_keys",
    "list_datasets",
    "list_jobs",
    "load_job",
    "lock_owner_submissions",
    "mark_requeued",
    "mark_running",
    "next_queued_job",
    "owner_of_session",
    "read_job_row",
    "record_attempt",
    "request_cancel",
    "requeue_job",
    "revoke_api_key",
    "save_pair_metrics",
    "save_recommendation",
    "save_task_result",
    "session_token",
    "stale_queued_jobs",
    "stale_running_jobs",
    "update_progress",
    "worker_should_stop",
]

API_KEY_PREFIX = "tg_"
"""Every API key starts with this, so a leaked key is recognisable (secret scanners)."""
_PREFIX_LENGTH = 12  # api_keys.prefix: "tg_" + 9 characters of the secret part
MAX_PAGE_SIZE = 100
"""The largest ``limit`` a listing accepts."""
PAIR_METRIC_FIELDS: frozenset[str] = frozenset(
    c.key for c in PairMetric.__table__.columns if c.key not in {"id", "job_id"}
)
"""The keys every dict given to :func:`save_pair_metrics` must have (and no others)."""

_Row = TypeVar("_Row", Job, Dataset)


class DeleteResult(StrEnum):
    """Outcome of :func:`delete_dataset`."""

    DELETED = "deleted"
    NOT_FOUND = "not_found"  # no such dataset, or another owner's
    IN_USE = "in_use"  # a queued or running job reads it


class IdempotencyKeyReused(Exception):
    """:func:`create_job` was given an idempotency key this owner already used.

    ``job`` is the job created with that key. The caller compares ``job.request_hash`` with the
    new request's: equal means a retry (answer with ``job``), different means a conflict.
    """

    def __init__(self, job: Job) -> None:
        super().__init__(f"idempotency key {job.idempotency_key!r} already used by job {job.id}")
        self.job = job


class UnknownDatasets(LookupError):
    """:func:`create_job` was given dataset ids that do not exist or belong to another owner."""

    def __init__(self, dataset_ids: Sequence[str]) -> None:
        super().__init__(f"unknown dataset id(s): {', '.join(dataset_ids)}")
        self.dataset_ids = list(dataset_ids)


# --------------------------------------------------------------------------------------------
# helpers


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _now(now: datetime | None) -> datetime:
    return utcnow() if now is None else _aware(now, "now")


def _timestamp(value: datetime) -> Any:
    """A bind parameter typed as a UTC timestamp, for use inside SQL expressions."""
    return literal(value, type_=UTCDateTime())


def _rowcount(session: Session, statement: Executable) -> int:
    """Run a bulk UPDATE/DELETE and return how many rows it touched."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return cast(CursorResult[Any], result).rowcount


def _expire_job(session: Session, job_id: str) -> None:
    """Drop the session's cached state of a job changed by a bulk UPDATE.

    Bulk UPDATEs bypass the identity map; expiring (rather than letting SQLAlchemy evaluate
    ``attempts + 1`` on a possibly stale object) makes the next access read the database.
    """
    cached = session.identity_map.get(identity_key(Job, job_id))
    if cached is not None:
        session.expire(cached)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """The opaque, URL-safe cursor pointing just after the row ``(created_at, row_id)``."""
    payload = json.dumps([_aware(created_at, "created_at").isoformat(), row_id])
    return base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; ``ValueError`` for anything it did not produce."""
    try:
        if not isinstance(cursor, str) or not 0 < len(cursor) <= 200:
            raise ValueError("bad length")
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        created, row_id = json.loads(payload)
        created_at = _aware(datetime.fromisoformat(created), "cursor time")
        if str(uuid.UUID(row_id)) != row_id:
            raise ValueError("not a canonical UUID")
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeError) as exc:
        # OverflowError: a forged time whose offset moves it outside datetime's range.
        raise ValueError(
            f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page unchanged"
        ) from exc
    return created_at, row_id


def _page(
    session: Session, stmt: Any, model: type[_Row], limit: int, cursor: str | None
) -> tuple[list[_Row], str | None]:
    """Keyset pagination, newest first: ORDER BY created_at DESC, id DESC.

    The id breaks ties between equal timestamps, so pages neither repeat nor skip rows; the
    cursor is the (created_at, id) of the page's last row.
    """
    _check_limit(limit)
    if cursor is not None:
        after_created, after_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(model.created_at, model.id) < (after_created, after_id))
    stmt = stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)


# --------------------------------------------------------------------------------------------
# API keys


def hash_api_key(key: str) -> str:
    """The stored form of an API key: its SHA-256, hex (64 characters)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(*, session: Session, name: str, owner: str | None = None) -> tuple[ApiKey, str]:
    """Create a key named ``name`` for ``owner`` (default: the name). Flushes; caller commits.

    Returns the row and the plaintext key, ``tg_`` + 43 random URL-safe characters. Only its
    SHA-256 and its first 12 characters (``prefix``, shown in listings) are stored: the
    plaintext cannot be recovered later.
    """
    if not name:
        raise ValueError("an API key needs a name")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id(),
        name=name,
        owner=owner or name,
        key_hash=hash_api_key(key),
        prefix=key[:_PREFIX_LENGTH],
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def authenticate(*, session: Session, key: str) -> ApiKey | None:
    """The live key whose plaintext is ``key``; ``None`` for unknown or revoked keys.

    The lookup is by hash (an index probe, no secret-dependent scan); the hashes are then
    compared in constant time.
    """
    if not key or not key.startswith(API_KEY_PREFIX):
        return None
    digest = hash_api_key(key)
    row = session.scalar(
        select(ApiKey)
        .where(ApiKey.key_hash == digest)
        .execution_options(populate_existing=True)  # never trust a cached revoked_at
    )
    if row is None or row.revoked_at is not None:
        return None
    return row if hmac.compare_digest(row.key_hash, digest) else None


SESSION_TOKEN_VERSION = "s1"


def session_token(*, key: ApiKey, expires: datetime) -> str:
    """A browser session for ``key`` until ``expires``: ``s1.<key id>.<unix expiry>.<mac>``, the
    MAC an HMAC-SHA256 keyed with the key's stored hash. It holds no secret: the key itself
    never goes into a cookie, and revoking the key ends every session made from it."""
    payload = f"{SESSION_TOKEN_VERSION}.{key.id}.{int(expires.timestamp())}"
    mac = hmac.new(key.key_hash.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def owner_of_session(*, session: Session, token: str, now: datetime | None = None) -> str | None:
    """The owner of a :func:`session_token` that is well-formed, unexpired, correctly signed
    and made from a live key; else ``None``."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != SESSION_TOKEN_VERSION or not parts[2].isdigit():
        return None
    _, key_id, expiry, mac = parts
    if int(expiry) <= _now(now).timestamp():
        return None
    row = session.scalar(
        select(ApiKey).where(ApiKey.id == key_id).execution_options(populate_existing=True)
    )
    if row is None or row.revoked_at is not None:
        return None
    payload = f"{SESSION_TOKEN_VERSION}.{key_id}.{expiry}"
    expected = hmac.new(row.key_hash.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return row.owner if hmac.compare_digest(expected, mac) else None


def revoke_api_key(*, session: Session, name_or_prefix: str, now: datetime | None = None) -> int:
    """Revoke every live key whose name or 12-character prefix equals ``name_or_prefix``.

    Returns how many keys were revoked (0: none matched, or all were revoked already). Revoking
    by name revokes all of that name's keys; to rotate, create the new key and revoke the old
    one by its prefix. Caller commits.
    """
    if not name_or_prefix:
        raise ValueError("name_or_prefix must not be empty")
    revoked = _rowcount(
        session,
        update(ApiKey)
        .where(
            ApiKey.revoked_at.is_(None),
            (ApiKey.name == name_or_prefix) | (ApiKey.prefix == name_or_prefix),
        )
        .values(revoked_at=_now(now)),
    )
    for cached in list(session.identity_map.values()):
        if isinstance(cached, ApiKey):
            session.expire(cached)
    if revoked:
        # API processes cache live keys (app.caches). In this process a revoked key must stop
        # working at once: forget them now, and again once the revocation is committed (a
        # request checking the key in between could have cached it as live).
        forget_api_keys()
        event.listen(session, "after_commit", lambda _session: forget_api_keys(), once=True)
    return revoked


def list_api_keys(*, session: Session, include_revoked: bool = True) -> list[ApiKey]:
    """All keys, oldest first (rows hold no secret: only hash and prefix)."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt))


# --------------------------------------------------------------------------------------------
# datasets


def create_dataset(
    *,
    session: Session,
    owner: str,
    filename: str,
    format: str,
    size_bytes: int,
    sha256: str,
    row_count: int,
    columns: list[str],
    label_summary: dict[str, dict[str, int]],
    artifact_path: str,
) -> Dataset:
    """Record an uploaded dataset (its file is already in the artifact store). Caller commits."""
    if format not in DATASET_FORMATS:
        raise ValueError(f"format must be one of {', '.join(DATASET_FORMATS)}, got {format!r}")
    dataset = Dataset(
        id=new_id(),
        owner=owner,
        filename=filename,
        format=format,
        size_bytes=size_bytes,
        sha256=sha256,
        row_count=row_count,
        columns=list(columns),
        label_summary=dict(label_summary),
        artifact_path=artifact_path,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(*, session: Session, owner: str, dataset_id: str) -> Dataset | None:
    """The owner's dataset, or ``None`` (missing, or another owner's)."""
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner))


def list_datasets(
    *, session: Session, owner: str, limit: int = 20, cursor: str | None = None
) -> tuple[list[Dataset], str | None]:
    """One page of the owner's datasets, newest first, and the cursor of the next page.

    The next cursor is ``None`` on the last page; a malformed cursor raises ``ValueError``.
    """
    return _page(session, select(Dataset).where(Dataset.owner == owner), Dataset, limit, cursor)


def dataset_in_use(*, session: Session, dataset_id: str) -> bool:
    """Whether a job that is not terminal (queued or running) reads the dataset."""
    active_link = (
        select(JobDataset.job_id)
        .join(Job, Job.id == JobDataset.job_id)
        .where(JobDataset.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES))
    )
    return bool(session.scalar(select(exists(active_link))))


def delete_dataset(*, session: Session, owner: str, dataset_id: str) -> DeleteResult:
    """Delete the owner's dataset row unless a queued or running job reads it.

    Jobs that already finished keep their history: their ``job_datasets`` links to this dataset
    are removed (the job's ``request`` JSON still names the dataset id, and its results stay),
    then the row is deleted. The FK itself stays RESTRICT, so no code path can drop a dataset
    under a live job. On PostgreSQL the dataset row is locked first (``FOR UPDATE``), so a job
    created concurrently either is seen here (``IN_USE``) or fails its FK check. Caller commits,
    then removes the artifact file.
    """
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner).with_for_update()
    )
    if dataset is None:
        return DeleteResult.NOT_FOUND
    if dataset_in_use(session=session, dataset_id=dataset_id):
        return DeleteResult.IN_USE
    session.execute(delete(JobDataset).where(JobDataset.dataset_id == dataset_id))
    session.delete(dataset)
    session.flush()
    return DeleteResult.DELETED


# --------------------------------------------------------------------------------------------
# jobs


def find_job_by_idempotency_key(*, session: Session, owner: str, key: str) -> Job | None:
    """The owner's job created with idempotency key ``key``, if any."""
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def create_job(
    *,
    session: Session,
    owner: str,
    request: dict[str, Any],
    model: str,
    request_hash: str,
    idempotency_key: str | None,
    dataset_ids: Iterable[str],
    now: datetime | None = None,
) -> Job:
    """Create a queued job reading ``dataset_ids`` (all the owner's). Caller commits.

    Raises :class:`UnknownDatasets` if a dataset is missing or another owner's, and
    :class:`IdempotencyKeyReused` (carrying the existing job) if the owner already used
    ``idempotency_key`` — also when a concurrent request wins the race for the key: the insert
    runs in a SAVEPOINT, so the caller's transaction survives the unique violation.
    """
    wanted = list(dict.fromkeys(dataset_ids))
    if idempotency_key is not None:
        existing = find_job_by_idempotency_key(session=session, owner=owner, key=idempotency_key)
        if existing is not None:
            raise IdempotencyKeyReused(existing)
    if wanted:
        found = set(
            session.scalars(
                select(Dataset.id).where(Dataset.owner == owner, Dataset.id.in_(wanted))
            )
        )
        missing = [d for d in wanted if d not in found]
        if missing:
            raise UnknownDatasets(missing)
    job = Job(
        id=new_id(),
        owner=owner,
        status="queued",
        stage=None,
        progress=0.0,
        request=request,
        model=model,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        cancel_requested=False,
        attempts=0,
        timings={},
        created_at=_now(now),
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
            session.add_all([JobDataset(job_id=job.id, dataset_id=d) for d in wanted])
    except IntegrityError:
        if idempotency_key is not None:
            existing = find_job_by_idempotency_key(
                session=session, owner=owner, key=idempotency_key
            )
            if existing is not None:
                raise IdempotencyKeyReused(existing) from None
        raise
    return job


def get_job(*, session: Session, owner: str, job_id: str) -> Job | None:
    """The owner's job (freshly read), or ``None`` (missing, or another owner's).

    Its ``datasets`` are loaded when first used, not with the job (the API's routes read the
    job's stored request instead; this spares a second query per ``GET /jobs/{id}``).
    """
    return session.scalar(
        select(Job)
        .where(Job.id == job_id, Job.owner == owner)
        .options(lazyload(Job.datasets))
        .execution_options(populate_existing=True)
    )


_JOB_ROW = select(*Job.__table__.columns).where(
    Job.id == bindparam("job_id"), Job.owner == bindparam("owner")
)  # built once: building and compiling it anew per call cost more than the query's round trip


def read_job_row(*, connection: Connection, owner: str, job_id: str) -> Row[Any] | None:
    """The owner's job as one row of its columns (no ORM object), or ``None``: one SELECT.

    For the API's fast lane (:mod:`app.fastlane`), on a connection in autocommit mode, so the
    read is one round trip with no BEGIN or ROLLBACK. The row's attributes are the job's.
    """
    return connection.execute(_JOB_ROW, {"job_id": job_id, "owner": owner}).one_or_none()


def load_job(*, session: Session, job_id: str) -> Job | None:
    """Any owner's job, freshly read: for workers, which are not acting for an owner."""
    return session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )


def list_jobs(
    *,
    session: Session,
    owner: str,
    status: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of the owner's jobs, newest first, and the cursor of the next page.

    Ordered by (created_at DESC, id DESC), which the index (owner, created_at, id) serves.
    ``status`` filters to one status. The next cursor is ``None`` on the last page; it is an
    opaque URL-safe string, and a malformed one raises ``ValueError``.
    """
    stmt = select(Job).where(Job.owner == owner)
    if status is not None:
        if status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}, got {status!r}")
        stmt = stmt.where(Job.status == status)
    return _page(session, stmt, Job, limit, cursor)


def mark_running(*, session: Session, job_id: str, now: datetime | None = None) -> bool:
    """A worker takes the job: queued/running → running. Caller commits.

    Increments ``attempts`` (a redelivered job counts again), sets ``started_at`` the first time
    and ``heartbeat_at`` every time. Returns ``False`` — the worker must not run the job — when
    it is missing, terminal, or has a cancel request.
    """
    now = _now(now)
    changed = _rowcount(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(ACTIVE_STATUSES),
            Job.cancel_requested.is_(False),
        )
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, _timestamp(now)),
            heartbeat_at=now,
        ),
    )
    _expire_job(session, job_id)
    return changed == 1


def update_progress(
    *,
    session: Session,
    job_id: str,
    stage: str,
    progress: float,
    timings: Mapping[str, float] | None = None,
    stage_in: Sequence[str] | None = None,
    now: datetime | None = None,
) -> bool:
    """Report progress of a running job; also its heartbeat. Caller commits.

    ``progress`` (0..1) never moves backwards: a smaller value keeps the stored one (a retried
    stage re-reports from its start). ``timings`` are merged into the stored dict (seconds per
    stage; the job's single worker is the only writer). ``stage_in``, when given, writes only
    while the stored stage is NULL or one of these (a late fine-tune on another worker must not
    move a job whose analysis was claimed back to ``finetune``). Returns ``False`` if the job is
    not running (e.g. cancelled or finished meanwhile) or its stage did not match: nothing is
    written then.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if math.isnan(progress) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be within [0, 1], got {progress!r}")
    values: dict[str, Any] = {
        "stage": stage,
        "progress": case((Job.progress > progress, Job.progress), else_=progress),
        "heartbeat_at": _now(now),
    }
    if timings:
        stored = session.scalar(select(Job.timings).where(Job.id == job_id)) or {}
        values["timings"] = {**stored, **{k: float(v) for k, v in timings.items()}}
    stmt = update(Job).where(Job.id == job_id, Job.status == "running")
    if stage_in is not None:
        stmt = stmt.where(Job.stage.is_(None) | Job.stage.in_(list(stage_in)))
    changed = _rowcount(session, stmt.values(**values))
    _expire_job(session, job_id)
    return changed == 1


def claim_analysis(*, session: Session, job_id: str, now: datetime | None = None) -> bool:
    """Claim the analysis step of a running job whose fine-tunes are done: exactly one caller wins.

    A single conditional UPDATE (stage ``finetune`` → ``similarity``): when several workers
    finish the last fine-tunes at once, only one sees the row change. Caller commits.
    """
    changed = _rowcount(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.stage == "finetune")
        .values(stage="similarity", heartbeat_at=_now(now)),
    )
    _expire_job(session, job_id)
    return changed == 1


def record_attempt(*, session: Session, job_id: str, now: datetime | None = None) -> int:
    """Count one more attempt of a running job (a task redelivered after its worker was lost).

    Returns the new ``attempts``, or 0 if the job is not running (nothing written). Caller
    commits.
    """
    changed = _rowcount(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(attempts=Job.attempts + 1, heartbeat_at=_now(now)),
    )
    _expire_job(session, job_id)
    if changed != 1:
        return 0
    return int(session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0)


def requeue_job(*, session: Session, job_id: str, refund_attempt: bool = False) -> bool:
    """Put a running job back to ``queued`` (its worker stopped; results so far are kept).

    ``refund_attempt`` takes back the attempt counted when it was started (a clean stop of
    the service is not a lost worker). Caller commits.
    """
    values: dict[str, Any] = {"status": "queued", "heartbeat_at": None}
    if refund_attempt:
        values["attempts"] = case((Job.attempts > 0, Job.attempts - 1), else_=0)
    changed = _rowcount(
        session, update(Job).where(Job.id == job_id, Job.status == "running").values(**values)
    )
    _expire_job(session, job_id)
    return changed == 1


def worker_should_stop(*, session: Session, job_id: str) -> bool:
    """Whether a worker running the job should stop: cancel requested, or no longer running.

    Reads the row directly, never the session's cache.
    """
    row = session.execute(
        select(Job.cancel_requested, Job.status).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return True
    return bool(row.cancel_requested) or row.status != "running"


def next_queued_job(*, session: Session) -> str | None:
    """The id of the oldest queued job without a cancel request (the embedded worker's queue)."""
    return session.scalar(
        select(Job.id)
        .where(Job.status == "queued", Job.cancel_requested.is_(False))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )


def stale_queued_jobs(*, session: Session, older_than: datetime) -> list[Job]:
    """Queued jobs created, and last re-sent (:func:`mark_requeued`), before ``older_than``.

    For a sweeper: their queue message may have been lost. Oldest first.
    """
    last_sent = func.coalesce(Job.heartbeat_at, Job.created_at)
    stmt = (
        select(Job)
        .where(
            Job.status == "queued",
            Job.cancel_requested.is_(False),
            last_sent < _timestamp(_aware(older_than, "older_than")),
        )
        .order_by(last_sent, Job.id)
    )
    return list(session.scalars(stmt))


def mark_requeued(*, session: Session, job_id: str, now: datetime | None = None) -> bool:
    """Stamp a queued job as re-sent to the queue now (``heartbeat_at``). Caller commits."""
    changed = _rowcount(
        session,
        update(Job).where(Job.id == job_id, Job.status == "queued").values(heartbeat_at=_now(now)),
    )
    _expire_job(session, job_id)
    return changed == 1


def heartbeat(*, session: Session, job_id: str, now: datetime | None = None) -> bool:
    """Stamp ``heartbeat_at`` of a running job (long stages between progress reports).

    Returns ``False`` if the job is not running. Caller commits.
    """
    changed = _rowcount(
        session,
        update(Job).where(Job.id == job_id, Job.status == "running").values(heartbeat_at=_now(now)),
    )
    _expire_job(session, job_id)
    return changed == 1


def request_cancel(
    *, session: Session, owner: str, job_id: str, now: datetime | None = None
) -> Job | None:
    """Cancel the owner's job; returns it as it now stands, or ``None`` if not the owner's.

    Queued: cancelled at once (``finished_at`` set; a worker picking it up later is refused by
    :func:`mark_running`). Running: ``cancel_requested`` is set and the worker stops at its
    next check, then calls ``finish_job(status="cancelled")``. Terminal: unchanged. Caller
    commits.
    """
    job = get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        return None
    now = _now(now)
    cancelled = _rowcount(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now),
    )
    if not cancelled:
        _rowcount(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True),
        )
    session.refresh(job)
    return job


def is_cancel_requested(*, session: Session, job_id: str) -> bool:
    """Whether the worker should stop: a cancel was requested, or the job is cancelled or gone.

    Reads the row directly (never the session's cache), so it sees the API's committed request.
    """
    row = session.execute(
        select(Job.cancel_requested, Job.status).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return True
    return bool(row.cancel_requested) or row.status == "cancelled"


def finish_job(
    *,
    session: Session,
    job_id: str,
    status: str,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move a queued or running job to a terminal ``status``; ``finished_at`` is set.

    Idempotent and first-writer-wins: a job that is already terminal is never changed (a late
    ``failed`` cannot overwrite ``cancelled`` or ``succeeded``). ``succeeded`` also sets stage
    ``done`` and progress 1. Returns whether this call made the transition. Caller commits.
    """
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": _now(now)}
    if status == "succeeded":
        values.update(stage="done", progress=1.0)
    changed = _rowcount(
        session,
        update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_STATUSES)).values(**values),
    )
    _expire_job(session, job_id)
    return changed == 1


def stale_running_jobs(*, session: Session, older_than: datetime) -> list[Job]:
    """Running jobs whose last sign of life is before ``older_than`` (for a sweeper).

    The last sign of life is ``heartbeat_at``, else ``started_at``, else ``created_at``.
    Oldest first.
    """
    last_seen = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
    stmt = (
        select(Job)
        .where(Job.status == "running", last_seen < _timestamp(_aware(older_than, "older_than")))
        .order_by(last_seen, Job.id)
    )
    return list(session.scalars(stmt))


def lock_owner_submissions(*, session: Session, owner: str) -> None:
    """Serialise the owner's job submissions until this transaction ends, so that the
    per-owner quota (count the active jobs, then insert one) holds under concurrent requests.

    PostgreSQL: a transaction-scoped advisory lock on a hash of the owner (other owners are
    not held up; a hash collision only makes two owners wait for each other). SQLite: nothing
    to do, a writing request's transaction holds the database's write lock from its BEGIN
    (:func:`app.db.for_writes`).
    """
    if session.get_bind().dialect.name == "postgresql":
        key = literal(f"taskgrouper.submit:{owner}")
        session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


def count_active_jobs(*, session: Session, owner: str) -> int:
    """How many of the owner's jobs are queued or running (for per-owner quotas)."""
    stmt = (
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status.in_(ACTIVE_STATUSES))
    )
    return int(session.scalar(stmt) or 0)


# --------------------------------------------------------------------------------------------
# results


def _task_result(session: Session, job_id: str, task: str, seed: int) -> TaskResult | None:
    return session.scalar(
        select(TaskResult).where(
            TaskResult.job_id == job_id, TaskResult.task == task, TaskResult.seed == seed
        )
    )


def save_task_result(
    *,
    session: Session,
    job_id: str,
    task: str,
    seed: int,
    macro_f1: float,
    accuracy: float,
    steps: int,
    seconds: float,
    metrics: dict[str, Any] | None = None,
    weights_path: str | None = None,
    reps_path: str | None = None,
) -> TaskResult:
    """Record one fine-tuned model's result; idempotent on (job, task, seed). Caller commits.

    If the row exists it is returned unchanged (a redelivered task re-saving its result is a
    no-op, even when racing another delivery: the insert runs in a SAVEPOINT).
    """
    existing = _task_result(session, job_id, task, seed)
    if existing is not None:
        return existing
    row = TaskResult(
        id=new_id(),
        job_id=job_id,
        task=task,
        seed=seed,
        macro_f1=macro_f1,
        accuracy=accuracy,
        steps=steps,
        seconds=seconds,
        metrics=dict(metrics or {}),
        weights_path=weights_path,
        reps_path=reps_path,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = _task_result(session, job_id, task, seed)
        if existing is None:  # not the uniqueness race: e.g. the job does not exist
            raise
        return existing
    return row


def get_task_results(*, session: Session, job_id: str) -> list[TaskResult]:
    """The job's task results, by task then seed."""
    stmt = select(TaskResult).where(TaskResult.job_id == job_id)
    return list(session.scalars(stmt.order_by(TaskResult.task, TaskResult.seed)))


def save_pair_metrics(
    *, session: Session, job_id: str, pairs: Sequence[Mapping[str, Any]]
) -> list[PairMetric]:
    """Replace all of the job's pair metrics with ``pairs``. Caller commits.

    Each dict has exactly the keys :data:`PAIR_METRIC_FIELDS` (``task_a``, ``task_b``,
    ``cka_per_layer``, ``cka_min``, ``cka_min_layer``, ``cka_mean``, ``grad_cosine``,
    ``grad_cosine_per_layer``, ``conflict_rate``, ``tag_ab``, ``tag_ba``); ``ValueError``
    otherwise, before anything is written.
    """
    for i, pair in enumerate(pairs):
        missing = PAIR_METRIC_FIELDS - pair.keys()
        unknown = pair.keys() - PAIR_METRIC_FIELDS
        if missing or unknown:
            raise ValueError(
                f"pairs[{i}]: missing {sorted(missing)}, unknown {sorted(unknown)} "
                f"(expected exactly {sorted(PAIR_METRIC_FIELDS)})"
            )
    session.execute(delete(PairMetric).where(PairMetric.job_id == job_id))
    rows = [PairMetric(id=new_id(), job_id=job_id, **pair) for pair in pairs]
    session.add_all(rows)
    session.flush()
    return rows


def get_pair_metrics(*, session: Session, job_id: str) -> list[PairMetric]:
    """The job's pair metrics, by (task_a, task_b)."""
    stmt = select(PairMetric).where(PairMetric.job_id == job_id)
    return list(session.scalars(stmt.order_by(PairMetric.task_a, PairMetric.task_b)))


def save_recommendation(*, session: Session, job_id: str, body: dict[str, Any]) -> Recommendation:
    """Store the job's recommendation; idempotent: an existing one is returned unchanged.

    Caller commits.
    """
    existing = session.get(Recommendation, job_id)
    if existing is not None:
        return existing
    row = Recommendation(job_id=job_id, body=body, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = session.get(Recommendation, job_id)
        if existing is None:
            raise
        return existing
    return row


def get_recommendation(*, session: Session, owner: str, job_id: str) -> Recommendation | None:
    """The recommendation of the owner's job, or ``None`` (none yet, or not the owner's)."""
    return session.scalar(
        select(Recommendation)
        .join(Job, Job.id == Recommendation.job_id)
        .where(Recommendation.job_id == job_id, Job.owner == owner)
    )


def verified_recommendations(*, session: Session) -> list[tuple[Job, Recommendation]]:
    """Every finished job whose recommendation holds verification results, oldest first (the
    data ``taskgrouper calibrate`` fits ``p_match`` on)."""
    rows = session.execute(
        select(Job, Recommendation)
        .join(Recommendation, Recommendation.job_id == Job.id)
        .where(Job.status == "succeeded")
        .order_by(Recommendation.created_at, Job.id)
        .execution_options(yield_per=200)
    )
    return [(job, rec) for job, rec in rows if rec.body.get("verification")]


def save_calibration(
    *, session: Session, body: dict[str, Any], n_groups: int, n_jobs: int
) -> Calibration:
    """Store a fitted calibration; the newest one is in force. Caller commits."""
    row = Calibration(body=body, n_groups=n_groups, n_jobs=n_jobs, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def latest_calibration(*, session: Session) -> Calibration | None:
    """The calibration in force (the newest stored), or ``None`` (the shipped default applies)."""
    return session.scalar(
        select(Calibration).order_by(Calibration.created_at.desc(), Calibration.id.desc()).limit(1)
    )
