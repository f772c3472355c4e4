"""FastAPI dependencies: the database session, the caller's identity, and app-wide objects.

* :data:`SessionDep` — one SQLAlchemy session per request, from ``app.state.sessionmaker``;
  rolled back if the route raises, always closed. Tests override :func:`get_session`.
* :data:`CurrentOwner` — the owner of the API key in ``Authorization: Bearer <key>``; a missing,
  malformed, unknown or revoked key is a 401 in the API's error shape.
* :data:`DatasetIdDep`, :data:`JobIdDep` — the ``{dataset_id}`` / ``{job_id}`` path parameter in
  canonical form; anything that is not a UUID is a 404 (it cannot name a row).
* :data:`SettingsDep`, :data:`QueueDep`, :data:`StoreDep`, :data:`LimitsDep` — what
  :func:`app.main.create_app` put into ``app.state``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app import repository
from app.errors import ApiError
from app.queue import JobQueue
from app.settings import Settings
from app.storage import ArtifactStore

__all__ = [
    "LIMIT_DEFAULTS",
    "CurrentOwner",
    "DatasetIdDep",
    "JobIdDep",
    "Limits",
    "LimitsDep",
    "QueueDep",
    "SessionDep",
    "SettingsDep",
    "StoreDep",
    "current_owner",
    "get_session",
]

MIB = 1024 * 1024
LIMIT_DEFAULTS: dict[str, int] = {
    "max_upload_bytes": 50 * MIB,
    "max_body_bytes": 1 * MIB,
    "max_tasks_per_job": 20,
    "max_rows_per_dataset": 200_000,
    "max_active_jobs_per_owner": 4,
    "max_classes_per_task": 100,
}
"""The service limits and their defaults (read from the settings when they have the field)."""


@dataclass(frozen=True)
class Limits:
    """The service limits, read once from the settings by :meth:`from_settings`."""

    max_upload_bytes: int
    max_body_bytes: int
    max_tasks_per_job: int
    max_rows_per_dataset: int
    max_active_jobs_per_owner: int
    max_classes_per_task: int

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        values = {name: int(getattr(settings, name, d)) for name, d in LIMIT_DEFAULTS.items()}
        return cls(**values)


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request; rolled back on error, closed at the end."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`tg_...`), created with `taskgrouper keys create`: "
    "`Authorization: Bearer <key>`.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def current_owner(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The owner of the request's API key; 401 when there is no valid one."""
    if credentials is None:
        raise ApiError(
            401,
            "authentication required: send an API key as 'Authorization: Bearer <key>'",
            headers=_CHALLENGE,
        )
    key = repository.authenticate(session=session, key=credentials.credentials.strip())
    if key is None:
        raise ApiError(401, "the API key is unknown or has been revoked", headers=_CHALLENGE)
    return key.owner


CurrentOwner = Annotated[str, Depends(current_owner)]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def _store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def _limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


SettingsDep = Annotated[Settings, Depends(_settings)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]
LimitsDep = Annotated[Limits, Depends(_limits)]


def _canonical_id(value: str, kind: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(404, f"no {kind} with id {value!r} (ids are UUIDs)") from None


_ID_EXAMPLE = "3f2b8c1e-9a4d-4e57-8c0b-2d6f1a7e9b10"


def _dataset_id(
    dataset_id: Annotated[
        str, Path(description="The dataset's id (a UUID).", examples=[_ID_EXAMPLE])
    ],
) -> str:
    return _canonical_id(dataset_id, "dataset")


def _job_id(
    job_id: Annotated[str, Path(description="The job's id (a UUID).", examples=[_ID_EXAMPLE])],
) -> str:
    return _canonical_id(job_id, "job")


DatasetIdDep = Annotated[str, Depends(_dataset_id)]
JobIdDep = Annotated[str, Depends(_job_id)]
