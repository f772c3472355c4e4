"""FastAPI dependencies: the database session, the caller's identity, and app-wide objects.

* :data:`SessionDep` — one SQLAlchemy session per request, from ``app.state.sessionmaker``;
  closed (what it did not commit is rolled back) when the request is done. Tests override
  :func:`get_session`.
* :data:`CurrentOwner` — the owner of the API key in ``Authorization: Bearer <key>``; a missing,
  malformed, unknown or revoked key is a 401 in the API's error shape. Live keys are cached
  for ``api_key_cache_ttl_s`` (:class:`app.caches.ApiKeyCache` in ``app.state.key_cache``).
* :data:`ReaderOwner`, :data:`PageOwner` — for the report and the pages a browser opens, where
  no header can be sent: the caller may also be named by the ``taskgrouper_key`` cookie that
  ``POST /ui/login`` sets (a session cookie, HttpOnly, SameSite=Lax) holding a signed,
  expiring token made from the key (:func:`app.repository.session_token`), not the key. Only
  routes that read (GET) accept it, so a cookie can never make a state-changing API call.
  ``ReaderOwner`` answers 401 without a valid key; ``PageOwner`` is ``None`` then (a page sends
  the browser to the sign-in form).
* :data:`DatasetIdDep`, :data:`JobIdDep` — the ``{dataset_id}`` / ``{job_id}`` path parameter in
  canonical form; anything that is not a UUID is a 404 (it cannot name a row).
* :data:`SettingsDep`, :data:`QueueDep`, :data:`StoreDep`, :data:`LimitsDep` — what
  :func:`app.main.create_app` put into ``app.state``.

Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in its
thread pool, a hand-off that costs more than the work. The routes that use the database are plain
``def`` (they run in the thread pool). Requests beyond ``db_pool_size`` wait for a session
before they take a thread or a connection (see :func:`get_session`), so they cannot deadlock on
the pool under load.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Path, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import repository
from app.caches import ApiKeyCache
from app.db import for_writes
from app.errors import ApiError
from app.queue import JobQueue
from app.settings import Settings
from app.storage import ArtifactStore

__all__ = [
    "KEY_COOKIE",
    "LIMIT_DEFAULTS",
    "CurrentOwner",
    "DatasetIdDep",
    "JobIdDep",
    "Limits",
    "LimitsDep",
    "PageOwner",
    "QueueDep",
    "ReaderOwner",
    "SessionDep",
    "SettingsDep",
    "StoreDep",
    "current_owner",
    "get_session",
    "owner_for_key",
    "sign_in_required",
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


_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for one request, closed at the end (which rolls back what was not committed).

    At most ``db_pool_size`` requests of the process hold a session at once (one connection
    each, as many as the pool has): the others wait here, holding nothing, so no request ever
    waits for a connection while holding a thread another one needs (which deadlocked under
    load until the pool timed out). Closing a session that holds a connection does I/O
    (ROLLBACK, and the connection goes back to the pool): that runs in a worker thread outside
    the thread pool's limit, as FastAPI does for the exit of a plain generator dependency.
    """
    slots: anyio.Semaphore | None = getattr(request.app.state, "db_slots", None)
    async with slots if slots is not None else contextlib.nullcontext():
        session: Session = request.app.state.sessionmaker()
        if request.method not in _READ_ONLY_METHODS and isinstance(session.bind, Engine):
            session.bind = for_writes(session.bind)  # SQLite: queue for the write lock
        try:
            yield session
        finally:
            if session.in_transaction():
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
            else:
                session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`tg_...`), created with `taskgrouper keys create`: "
    "`Authorization: Bearer <key>`.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _lookup_owner(session: Session, key: str) -> str | None:
    row = repository.authenticate(session=session, key=key)
    # End the read-only transaction: the connection goes back to the pool before the request
    # waits for a thread again (for its route).
    session.commit()
    return None if row is None else row.owner


async def owner_for_key(request: Request, session: Session, key: str) -> str | None:
    """The owner of a live API key (through the key cache), or ``None``."""
    key = key.strip()
    if not key:
        return None
    cache: ApiKeyCache | None = getattr(request.app.state, "key_cache", None)
    digest = repository.hash_api_key(key)
    owner = cache.get(digest) if cache is not None else None
    if owner is None:
        owner = await run_in_threadpool(_lookup_owner, session, key)
        if owner is not None and cache is not None:
            cache.put(digest, owner)
    return owner


async def current_owner(
    request: Request,
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
    owner = await owner_for_key(request, session, credentials.credentials)
    if owner is None:
        raise ApiError(401, "the API key is unknown or has been revoked", headers=_CHALLENGE)
    return owner


CurrentOwner = Annotated[str, Depends(current_owner)]

KEY_COOKIE = "taskgrouper_key"
"""The browser session's cookie: a signed token for the key entered on the sign-in page."""

_cookie = APIKeyCookie(
    name=KEY_COOKIE,
    auto_error=False,
    scheme_name="BrowserSession",
    description="A signed, expiring session token for the API key entered once on the sign-in "
    "page (`/ui/login`), kept in a session cookie. Accepted by the report, its downloads and "
    "the pages, never by a route that changes anything.",
)


def _session_owner(session: Session, token: str) -> str | None:
    owner = repository.owner_of_session(session=session, token=token)
    session.commit()  # end the read-only transaction (as _lookup_owner)
    return owner


async def page_owner(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> str | None:
    """The owner of the Bearer key or, without one, of the session cookie's signed token
    (:func:`app.repository.session_token`); else None."""
    if credentials is not None:
        return await owner_for_key(request, session, credentials.credentials)
    if cookie:
        return await run_in_threadpool(_session_owner, session, cookie.strip())
    return None


def sign_in_required() -> ApiError:
    """The 401 of a route that also takes the browser session."""
    return ApiError(
        401,
        "authentication required: send an API key as 'Authorization: Bearer <key>' or "
        "sign in at /ui/login",
        headers=_CHALLENGE,
    )


async def reader_owner(owner: Annotated[str | None, Depends(page_owner)]) -> str:
    """:func:`page_owner`, and 401 when there is none."""
    if owner is None:
        raise sign_in_required()
    return owner


PageOwner = Annotated[str | None, Depends(page_owner)]
ReaderOwner = Annotated[str, Depends(reader_owner)]


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


async def _store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def _limits(request: Request) -> Limits:
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


async def _dataset_id(
    dataset_id: Annotated[
        str, Path(description="The dataset's id (a UUID).", examples=[_ID_EXAMPLE])
    ],
) -> str:
    return _canonical_id(dataset_id, "dataset")


async def _job_id(
    job_id: Annotated[str, Path(description="The job's id (a UUID).", examples=[_ID_EXAMPLE])],
) -> str:
    return _canonical_id(job_id, "job")


DatasetIdDep = Annotated[str, Depends(_dataset_id)]
JobIdDep = Annotated[str, Depends(_job_id)]
