"""The fast lane of the two polled reads: ``GET /jobs/{id}`` and ``GET /recommendations/{id}``.

Clients poll these two routes (the client's progress bar, the jobs page, scripts waiting for a
result), so under load they are most of the traffic. Measured with 50 clients, a read spent most
of its CPU in the framework (routing, middleware, dependency solving, thread hand-offs), not in
the read. :class:`ReadFastLane` is an ASGI middleware that answers the common case of these two
routes before FastAPI sees the request, with the same bytes:

* the path is ``/jobs/{id}`` or ``/recommendations/{id}`` with a canonical job id (a lowercase
  UUID) and no query string, and the method is GET;
* the ``Authorization: Bearer`` key was found live by this process within the last
  ``api_key_cache_ttl_s`` seconds (:class:`app.caches.ApiKeyCache`: the lane never reads keys);
* a recommendation is answered only from :class:`app.caches.RecommendationCache`, which holds the
  rendered recommendations of succeeded jobs with their owner. A succeeded job never changes and
  is never deleted, so no database read is needed;
* a job is read with one SELECT (autocommit: no BEGIN or ROLLBACK) in a worker thread, at most
  ``db_pool_size`` at once as in the routes, and rendered by :func:`app.routes.jobs.job_public`
  as the route renders it. Job reads are never cached: a poll sees every change.

Everything else goes on to the app unchanged: a key this process has not checked yet, a missing
or another owner's job, a recommendation not yet rendered here, HEAD, a query string, a
non-canonical id. So every error, and every first answer, is the routes' own; the lane only
repeats what they have already established. ``tests/test_fastlane.py`` checks that the lane's
answers equal the routes' byte for byte, and ``bench/bench_load.py`` measures it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import anyio
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app import repository
from app.caches import ApiKeyCache, RecommendationCache
from app.db import make_engine
from app.routes.jobs import job_public

__all__ = ["ReadFastLane"]

log = logging.getLogger(__name__)

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # canonical: lowercase
_PATH = re.compile(rf"/(jobs|recommendations)/({_UUID})")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class ReadFastLane:
    """Answers the two polled reads when the answer needs no check the app has not made.

    ``app.state.fast_lane_answers`` counts the requests it answered (the rest went on).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(_route_path(scope))
        body = None if match is None else await self._answer(scope, *match.groups())
        if body is None:
            await self.app(scope, receive, send)
            return
        scope["app"].state.fast_lane_answers += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, resource: str, job_id: str) -> bytes | None:
        state = scope["app"].state
        owner = _cached_owner(scope, state.key_cache)
        if owner is None:
            return None
        if resource == "recommendations":
            cache: RecommendationCache = state.recommendations
            return cache.get(job_id, owner)
        engine = _autocommit_engine(state)
        if engine is None:
            return None
        try:
            async with state.db_slots:
                return await anyio.to_thread.run_sync(_job_json, scope, engine, owner, job_id)
        except Exception:  # e.g. the database is down: the route answers it (a 503), not a 500
            log.debug("fast lane: job %s left to the route", job_id, exc_info=True)
            return None


def _route_path(scope: Scope) -> str:
    """The path the app's routes see: without the ``root_path`` a proxy mounts the app under
    (as Starlette's router strips it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _cached_owner(scope: Scope, cache: ApiKeyCache) -> str | None:
    """The owner of the request's bearer key if this process found it live recently."""
    authorization = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    if not authorization:
        return None
    scheme, key = get_authorization_scheme_param(authorization)
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return cache.get(repository.hash_api_key(key))


def _autocommit_engine(state: Any) -> Engine | None:
    """The engine of the lane's reads, in autocommit mode (a read is one SELECT, no BEGIN or
    ROLLBACK); ``None`` when the app's sessions are not bound to an engine (the lane then steps
    aside). For PostgreSQL a pool of its own (as many connections as the app's) that does not
    ping a connection before each use: that ping was a second round trip per read. A read on a
    connection the server has dropped fails, the pool reconnects, and that one request goes to
    the route, whose pool does ping."""
    engine: Engine | None = getattr(state, "fast_lane_engine", None)
    if engine is None:
        bind = getattr(state.sessionmaker, "kw", {}).get("bind")
        if not isinstance(bind, Engine):
            return None
        if bind.dialect.name == "sqlite":  # a local file: nothing to ping
            engine = bind.execution_options(isolation_level="AUTOCOMMIT")
        else:
            size = bind.pool.size() if isinstance(bind.pool, QueuePool) else 5
            engine = make_engine(
                bind.url.render_as_string(hide_password=False),
                pool_size=size,
                max_overflow=0,
                pool_pre_ping=False,
                isolation_level="AUTOCOMMIT",
            )
            state.fast_lane_own_engine = engine  # disposed with the app (app.main)
        state.fast_lane_engine = engine
    return engine


def _job_json(scope: Scope, engine: Engine, owner: str, job_id: str) -> bytes | None:
    with engine.connect() as connection:
        row = repository.read_job_row(connection=connection, owner=owner, job_id=job_id)
    if row is None:
        return None
    return job_public(row, Request(scope)).model_dump_json(by_alias=True).encode()
