"""The REST API: :func:`create_app` builds the FastAPI application.

``uvicorn app.main:app`` serves an app built from the environment's settings (``app`` is created
on first access, not at import). :func:`serve_app` builds one for given settings and serves it,
in ``api_workers`` processes when there are several (each builds its app with
:func:`served_app`); none of these runs migrations (the CLI migrates before it serves). The API
process never imports torch or transformers: it validates requests with the light ``models``
modules and hands jobs to a :class:`app.queue.JobQueue`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.caches import ApiKeyCache, RecommendationCache
from app.db import database_url, make_engine, make_sessionmaker
from app.deps import Limits
from app.errors import error_response, install_error_handlers
from app.fastlane import ReadFastLane
from app.pages import static_files
from app.queue import CeleryQueue, JobQueue, NullQueue
from app.routes import api_router
from app.settings import Settings, get_settings
from app.storage import ArtifactStore

__all__ = ["BodySizeLimit", "create_app", "serve_app", "served_app"]

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes allowed above ``max_upload_bytes`` in an upload's body (multipart headers, boundary)."""

DESCRIPTION = """
**Should your text-classification tasks share one model?** taskgrouper fine-tunes one model per
task, compares the models' hidden representations (CKA, every layer) and their gradients
(alignment, conflicts, TAG lookahead), and recommends how to group the tasks into multi-task
models, with a verdict for each group and the evidence behind it.

## Authentication

Every route except `/healthz` and `/readyz` needs an API key (created by an operator with
`taskgrouper keys create`): send `Authorization: Bearer <key>`. You only ever see your own
datasets and jobs; anything else answers 404.

## A typical flow

1. `POST /datasets` a CSV, JSONL or Parquet file (multipart field `file`). The answer lists its
   columns and, for each candidate label column, its classes and counts.
2. `POST /jobs` with the dataset id, the text column and at least two label columns as tasks.
   The job is queued (202); send an `Idempotency-Key` header to retry safely.
3. Poll `GET /jobs/{id}` (status, stage, progress) until it has succeeded.
4. `GET /recommendations/{id}`: the grouping, a verdict per group, and every measurement.

## In a browser

`/ui/jobs` lists your jobs with live progress; `GET /recommendations/{id}/report` is a job's
report (verdict, CKA and gradient heatmaps, CKA over layers, verification). The first page asks
for your API key once and keeps it in a session cookie, which only these pages and the report's
downloads accept.

## Errors

Every error has one shape: `{"error": {"status": 422, "field": "training.lr", "message":
"training.lr: Input should be greater than 0"}}`. `field` names the request field at fault
(dotted, with list indices such as `tasks[1]`) or is null; the message always names it too.
"""

TAGS = [
    {"name": "datasets", "description": "Upload tables of texts and labels; list and delete them."},
    {"name": "jobs", "description": "Submit analyses, follow their progress, cancel them."},
    {"name": "recommendations", "description": "The result of a job that has succeeded."},
    {"name": "health", "description": "Liveness and readiness probes (no API key needed)."},
]


def _version() -> str:
    try:
        return metadata.version("taskgrouper")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes its limit (413).

    An ``HTTPException`` so that FastAPI's body parsing passes it on unchanged.
    """

    def __init__(self, limit: int, field: str) -> None:
        super().__init__(
            413, f"{field}: the request body is larger than the limit of {limit} bytes"
        )
        self.field = field


class BodySizeLimit:
    """Refuse request bodies over a size limit with a 413 in the API's error shape.

    The limit is ``upload_limit`` for ``POST /datasets`` and ``default_limit`` for everything
    else. A declared ``Content-Length`` over the limit is refused before anything is read;
    otherwise the bytes are counted as they arrive and reading stops at the limit.
    """

    def __init__(self, app: ASGIApp, *, default_limit: int, upload_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit

    def _limit(self, scope: Scope) -> tuple[int, str]:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope.get("method") == "POST" and path.rstrip("/") == "/datasets":
            return self.upload_limit, "file"
        return self.default_limit, "body"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, field = self._limit(scope)
        message = f"{field}: the request body is larger than the limit of {limit} bytes"
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, message, field)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, field)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await error_response(413, message, field)(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    queue: JobQueue | None = None,
    session_factory: Callable[[], Session] | None = None,
) -> FastAPI:
    """Build the API.

    ``settings`` default to the environment's (:func:`app.settings.get_settings`);
    ``session_factory`` defaults to a sessionmaker on ``database_url(settings)`` (its engine is
    disposed at shutdown; a pool of ``db_pool_size`` connections); ``queue`` defaults to a
    :class:`NullQueue`, which runs nothing (a warning says so). All three, the artifact store,
    the limits, the caches (:mod:`app.caches`) and ``db_slots`` (``db_pool_size`` requests use
    the database at once, :func:`app.deps.get_session`) go to ``app.state``. While the app
    runs, its thread pool (where the routes that use the database run) has ``db_pool_size``
    threads.
    """
    settings = settings if settings is not None else get_settings()
    limits = Limits.from_settings(settings)
    engine: Engine | None = None
    pool_size = settings.db_pool_size
    if session_factory is None:
        engine = make_engine(database_url(settings), pool_size=pool_size, max_overflow=0)
        session_factory = make_sessionmaker(engine)
    if queue is None:
        log.warning("no job queue given: jobs will be accepted but never run (NullQueue)")
        queue = NullQueue()

    job_queue = queue

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # More threads than connections would only wait for a connection (and for the GIL).
        anyio.to_thread.current_default_thread_limiter().total_tokens = pool_size
        # A queue with start()/stop() (the embedded LocalQueue) lives as long as the app.
        start = getattr(job_queue, "start", None)
        if callable(start):
            start()
        try:
            yield
        finally:
            stop = getattr(job_queue, "stop", None)
            if callable(stop):
                stop()
            if engine is not None:
                engine.dispose()
            lane: Engine | None = getattr(app.state, "fast_lane_own_engine", None)
            if lane is not None:
                lane.dispose()

    app = FastAPI(
        title="taskgrouper",
        version=_version(),
        summary="Recommends how to group text-classification tasks into multi-task models.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # Operation ids are the route names (create_job, get_job, ...): stable for clients
        # generated from the schema, and the targets of the OpenAPI links (app/links.py).
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.queue = queue
    app.state.sessionmaker = session_factory
    app.state.store = ArtifactStore(settings.artifacts)
    app.state.limits = limits
    app.state.key_cache = ApiKeyCache(settings.api_key_cache_ttl_s)
    app.state.db_slots = anyio.Semaphore(pool_size)
    app.state.recommendations = RecommendationCache()
    app.state.fast_lane_answers = 0
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        default_limit=limits.max_body_bytes,
        upload_limit=limits.max_upload_bytes + MULTIPART_OVERHEAD,
    )
    if settings.fast_reads:
        app.add_middleware(ReadFastLane)  # outside the size limit: it answers only bodyless GETs
    app.include_router(api_router)
    app.mount("/ui/static", static_files(), name="ui-static")
    return app


def served_app() -> FastAPI:
    """The app of one of several API worker processes: the environment's settings, Celery queue.

    uvicorn calls this in each worker process it starts (``factory=True``); the processes
    inherit the environment of ``taskgrouper serve``.
    """
    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError("several API worker processes need TASKGROUPER_BROKER_URL")
    return create_app(settings, queue=CeleryQueue(settings.broker_url))


def serve_app(
    settings: Settings | None = None,
    *,
    queue: JobQueue | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    workers: int = 1,
) -> None:
    """Serve the API with uvicorn (blocks). Runs no migrations.

    One worker: the app for ``settings`` and ``queue``, in this process. Several: uvicorn starts
    ``workers`` processes sharing the socket, each building its app with :func:`served_app`
    (``settings`` and ``queue`` must then be the environment's and its Celery queue).
    """
    import uvicorn

    if workers == 1:
        application = create_app(settings, queue=queue)
        uvicorn.run(application, host=host, port=port, log_level=log_level)
        return
    uvicorn.run(
        f"{__name__}:served_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
    )


def __getattr__(name: str) -> Any:
    """``app.main.app``: the app for the environment's settings, built on first access."""
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
