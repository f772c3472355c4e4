"""``/jobs``: submit an analysis, list and follow jobs, cancel one.

``POST /jobs`` validates everything before it writes anything: the model, the datasets (the
caller's), the columns, the task names, the candidates, the quota and finally the data itself
(each stored file is read again and every task built as the worker will build it). Only then is
the job row created and committed, and only after that commit is the job handed to the queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import Row
from sqlalchemy.orm import Session

from app import repository
from app.deps import (
    CurrentOwner,
    JobIdDep,
    Limits,
    LimitsDep,
    QueueDep,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from app.errors import ApiError, error_responses
from app.links import JOB_LINKS
from app.schemas import JobCreate, JobLinks, JobPublic, JobsPublic, JobStatus, ResolvedTask
from app.settings import Settings
from app.storage import ArtifactStore, StorageError
from app.tables import Dataset, Job
from models.data import DataError, build_task, read_table, validate_text_column
from models.grouping import normalize_candidate
from models.registry import ModelError, resolve_model

__all__ = ["job_public", "router"]

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_public(job: Job | Row[Any], request: Request) -> JobPublic:
    """The API's view of a job (its row object, or a row of its columns), with links."""
    stored = job.request or {}
    links = job_link_paths(request, job.id)
    return JobPublic(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]  # the table's CHECK constraint
        stage=job.stage,  # type: ignore[arg-type]
        progress=job.progress,
        cancel_requested=job.cancel_requested,
        error=job.error,
        attempts=job.attempts,
        model=job.model,
        tasks=[ResolvedTask(**t) for t in stored.get("tasks", [])],
        dataset_ids=[d["id"] for d in stored.get("datasets", [])],
        request=stored,
        timings=dict(job.timings or {}),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=JobLinks(**links),
    )


_LINK_ROUTES = {"self": "get_job", "cancel": "cancel_job", "recommendation": "get_recommendation"}


def job_link_paths(request: Request, job_id: str) -> dict[str, str]:
    """The paths of a job's links, as ``request.url_for(route, job_id=...).path`` gives them.

    The routes' path templates are looked up once per app (a lookup walks the routes: three per
    job answered made a tenth of a polled read's time).
    """
    app = request.scope["app"]
    templates: dict[str, str] | None = getattr(app.state, "job_link_templates", None)
    if templates is None:
        templates = {
            link: app.url_path_for(route, job_id="{job_id}") for link, route in _LINK_ROUTES.items()
        }
        app.state.job_link_templates = templates
    root = request.scope.get("root_path", "")
    return {link: root + path.format(job_id=job_id) for link, path in templates.items()}


def request_hash(body: JobCreate) -> str:
    """SHA-256 of the request's canonical JSON (defaults filled in, keys sorted)."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class _Task:
    name: str
    dataset_id: str
    column: str
    text_column: str
    where: str  # the request field naming the task
    text_where: str  # the request field naming its text column


@dataclass
class _Plan:
    tasks: list[_Task] = field(default_factory=list)
    datasets: dict[str, Dataset] = field(default_factory=dict)  # id -> row, first use first
    text_columns: dict[str, str] = field(default_factory=dict)  # dataset id -> text column


def _dataset(session: Session, owner: str, dataset_id: str, where: str) -> Dataset:
    dataset = repository.get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    if dataset is None:
        raise ApiError(422, f"no dataset with id {dataset_id!r}", field=where)
    return dataset


def _columns_hint(dataset: Dataset) -> str:
    shown = ", ".join(repr(c) for c in dataset.columns[:20])
    return f"the columns of dataset {dataset.filename!r} are {shown}"


def _resolve(body: JobCreate, owner: str, session: Session, limits: Limits) -> _Plan:
    """Check the request against the database (no file is read); the resolved tasks."""
    if len(body.tasks) > limits.max_tasks_per_job:
        raise ApiError(
            422,
            f"{len(body.tasks)} tasks, more than the limit of {limits.max_tasks_per_job} per job",
            field="tasks",
        )
    plan = _Plan()
    main = _dataset(session, owner, body.dataset_id, "dataset_id")
    if body.text_column not in main.columns:
        raise ApiError(
            422,
            f"text column {body.text_column!r} not found; {_columns_hint(main)}",
            field="text_column",
        )
    names: dict[str, str] = {}
    for i, item in enumerate(body.tasks):
        where = f"tasks[{i}]"
        if isinstance(item, str):
            task = _Task(item, main.id, item, body.text_column, where, "text_column")
        else:
            ds_where = f"{where}.dataset_id" if item.dataset_id else "dataset_id"
            ds = _dataset(session, owner, item.dataset_id or main.id, ds_where)
            task = _Task(
                item.name or item.column,
                ds.id,
                item.column,
                item.text_column or body.text_column,
                f"{where}.column",
                f"{where}.text_column" if item.text_column else "text_column",
            )
            plan.datasets.setdefault(ds.id, ds)
        dataset = plan.datasets.setdefault(task.dataset_id, main)
        if task.text_column not in dataset.columns:
            raise ApiError(
                422,
                f"text column {task.text_column!r} not found; {_columns_hint(dataset)}",
                field=f"{where}.text_column",
            )
        known = plan.text_columns.setdefault(dataset.id, task.text_column)
        if known != task.text_column:
            raise ApiError(
                422,
                f"dataset {dataset.filename!r} is already used with text column {known!r}; "
                "a dataset has one text column per job",
                field=task.text_where if task.text_where != "text_column" else where,
            )
        if task.column not in dataset.columns:
            labels = ", ".join(repr(c) for c in dataset.label_summary) or "none"
            raise ApiError(
                422,
                f"label column {task.column!r} not found in dataset {dataset.filename!r}; "
                f"its candidate label columns are {labels}",
                field=task.where,
            )
        if task.column == task.text_column:
            raise ApiError(
                422, f"{task.column!r} is the text column, not a label column", field=task.where
            )
        if task.name in names:
            raise ApiError(
                422,
                f"task name {task.name!r} is already used by {names[task.name]}; give each task "
                'a distinct name (a task object takes a "name")',
                field=where,
            )
        names[task.name] = where
        plan.tasks.append(task)
    return plan


def _check_data(
    body: JobCreate, plan: _Plan, settings: Settings, store: ArtifactStore, limits: Limits
) -> None:
    """Read every dataset again and build every task as the worker will (422 on a problem)."""
    train_texts: set[str] = set()
    for dataset_id, dataset in plan.datasets.items():
        tasks = [t for t in plan.tasks if t.dataset_id == dataset_id]
        if not tasks:
            continue
        text_column = plan.text_columns[dataset_id]
        try:
            data = store.read(dataset.artifact_path)
        except (OSError, StorageError):
            log.exception("dataset %s: file %s unreadable", dataset_id, dataset.artifact_path)
            raise ApiError(
                422,
                f"dataset {dataset.filename!r} ({dataset_id}) has no readable file on the server;"
                " upload it again",
                field=tasks[0].where,
            ) from None
        try:
            frame = read_table(
                data,
                fmt=dataset.format,
                name=dataset.filename,
                max_rows=limits.max_rows_per_dataset,
            )
            validate_text_column(frame, text_column, dataset=dataset.filename)
        except DataError as exc:
            raise ApiError(422, str(exc), field=tasks[0].text_where) from None
        for task in tasks:
            try:
                built = build_task(
                    frame,
                    name=task.name,
                    text_column=text_column,
                    label_column=task.column,
                    dataset=dataset.filename,
                    val_fraction=settings.val_fraction,
                    seed=body.training.seed,
                    min_class_count=settings.min_class_count,
                )
            except DataError as exc:
                raise ApiError(422, str(exc), field=task.where) from None
            if built.n_classes > limits.max_classes_per_task:
                raise ApiError(
                    422,
                    f"label column {task.column!r} has {built.n_classes} classes, more than the "
                    f"limit of {limits.max_classes_per_task}",
                    field=task.where,
                )
            train_texts.update(built.train_texts)
    n = len(train_texts)
    if n < 4:
        raise ApiError(
            422,
            f"the tasks' training texts hold only {n} distinct texts; comparing "
            "representations needs at least 4",
            field="tasks",
        )
    probe = body.training.probe_size
    if "probe_size" in body.training.model_fields_set and probe > n:
        raise ApiError(
            422,
            f"{probe} is more than the {n} distinct training texts of the tasks; use at most {n}",
            field="training.probe_size",
        )


def _normalised_request(body: JobCreate, plan: _Plan) -> dict[str, Any]:
    names = [t.name for t in plan.tasks]
    candidates = []
    for k, candidate in enumerate(body.candidate_task_sets or []):
        try:
            candidates.append(normalize_candidate(candidate, names))
        except ValueError as exc:
            raise ApiError(422, str(exc), field=f"candidate_task_sets[{k}]") from None
    used = {t.dataset_id for t in plan.tasks}
    return {
        "dataset_id": body.dataset_id,
        "text_column": body.text_column,
        "model": body.model,
        "tasks": [
            {
                "name": t.name,
                "dataset_id": t.dataset_id,
                "column": t.column,
                "text_column": t.text_column,
            }
            for t in plan.tasks
        ],
        "datasets": [
            {
                "id": d.id,
                "filename": d.filename,
                "format": d.format,
                "text_column": plan.text_columns[d.id],
            }
            for d in plan.datasets.values()
            if d.id in used
        ],
        "training": body.training.model_dump(mode="json"),
        "candidate_task_sets": candidates,
        "verify": body.verify,
        "max_groups": body.max_groups,
    }


def _replay(job: Job, digest: str, key: str, request: Request, response: Response) -> JobPublic:
    if job.request_hash != digest:
        raise ApiError(
            409,
            f"key {key!r} was already used for a different request (job {job.id}); "
            "use a new key for a new request",
            field="Idempotency-Key",
        )
    response.status_code = 200
    response.headers["Location"] = request.url_for("get_job", job_id=job.id).path
    return job_public(job, request)


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit an analysis",
    response_description="The job was created and queued.",
    description="Validate the request completely (datasets, columns, tasks, candidates, the "
    "data of every task, the quota), then create a queued job and hand it to the workers. "
    "Answers 202 with the job and its `Location`. With an `Idempotency-Key` header, repeating "
    "the same request returns the same job (200) instead of creating another; the same key "
    "with a different request is a 409.",
    responses={
        202: {"links": JOB_LINKS},
        200: {
            "model": JobPublic,
            "description": "A retry with the same Idempotency-Key.",
            "links": JOB_LINKS,
        },
        **error_responses(
            400,
            401,
            409,
            413,
            422,
            429,
            503,
            e400="The body cannot be decoded (not UTF-8).",
            e409="The Idempotency-Key was used for another request.",
        ),
    },
)
def create_job(
    body: JobCreate,
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    limits: LimitsDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Any unique string; a retry with the same key and body returns the "
            "same job.",
            examples=["4f1c2e0a-retry-safe"],
        ),
    ] = None,
) -> JobPublic:
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = repository.find_job_by_idempotency_key(
            session=session, owner=owner, key=idempotency_key
        )
        if existing is not None:
            return _replay(existing, digest, idempotency_key, request, response)
    try:
        resolve_model(body.model, settings.models, allow_path=False)
    except ModelError as exc:
        raise ApiError(422, str(exc), field="model") from None
    plan = _resolve(body, owner, session, limits)
    normalised = _normalised_request(body, plan)
    repository.lock_owner_submissions(session=session, owner=owner)
    active = repository.count_active_jobs(session=session, owner=owner)
    if active >= limits.max_active_jobs_per_owner:
        raise ApiError(
            429,
            f"you have {active} active (queued or running) jobs, the limit is "
            f"{limits.max_active_jobs_per_owner}; wait for one to finish or cancel one",
        )
    _check_data(body, plan, settings, store, limits)
    try:
        job = repository.create_job(
            session=session,
            owner=owner,
            request=normalised,
            model=body.model,
            request_hash=digest,
            idempotency_key=idempotency_key,
            dataset_ids=[d["id"] for d in normalised["datasets"]],
        )
        session.commit()
    except repository.IdempotencyKeyReused as exc:
        session.rollback()
        return _replay(exc.job, digest, idempotency_key or "", request, response)
    except repository.UnknownDatasets as exc:  # deleted meanwhile
        session.rollback()
        raise ApiError(
            422, f"no dataset with id {exc.dataset_ids[0]!r}", field="dataset_id"
        ) from None
    try:
        queue.enqueue(job.id)
    except Exception as exc:
        log.exception("job %s could not be queued", job.id)
        repository.finish_job(
            session=session, job_id=job.id, status="failed", error=f"could not be queued: {exc}"
        )
        session.commit()
        raise ApiError(
            503, f"the job queue is not reachable, so job {job.id} was marked failed; try again"
        ) from None
    response.headers["Location"] = request.url_for("get_job", job_id=job.id).path
    return job_public(job, request)


@router.get(
    "",
    response_model=JobsPublic,
    summary="List your jobs",
    response_description="One page of jobs.",
    description="Your jobs, newest first, optionally of one status, one page at a time: pass "
    "the answer's `next_cursor` as `cursor` for the next page (null on the last page).",
    responses=error_responses(401, 422, e422="`limit`, `cursor` or `status` is invalid."),
)
def list_jobs(
    owner: CurrentOwner,
    session: SessionDep,
    request: Request,
    status: Annotated[
        JobStatus | None, Query(description="Only jobs of this status.", examples=["running"])
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.", examples=[20])] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the previous page.", examples=[None]),
    ] = None,
) -> JobsPublic:
    try:
        rows, next_cursor = repository.list_jobs(
            session=session, owner=owner, status=status, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise ApiError(422, str(exc), field="cursor") from None
    return JobsPublic(data=[job_public(j, request) for j in rows], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    name="get_job",
    response_model=JobPublic,
    summary="Get a job",
    response_description="The job.",
    description="Where the job stands: status, stage, progress (0..1), timings per stage, "
    "error, attempts, and when it was created, started and finished.",
    responses={200: {"links": JOB_LINKS}, **error_responses(401, 404, 422)},
)
def get_job(
    job_id: JobIdDep, owner: CurrentOwner, session: SessionDep, request: Request
) -> Response:
    job = repository.get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    # Rendered here, as FastAPI renders a response_model (by alias): returning the model would
    # have FastAPI validate it again, in another trip through the thread pool (a polled route).
    body = job_public(job, request).model_dump_json(by_alias=True)
    return Response(body, media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    name="cancel_job",
    response_model=JobPublic,
    summary="Cancel a job",
    response_description="The job after the cancel: cancelled, or running with cancel_requested.",
    description="A queued job is cancelled at once. A running job gets `cancel_requested`; "
    "it stays `running` until its worker stops at the next check, then becomes `cancelled`. "
    "A finished job (succeeded, failed, cancelled) cannot be cancelled (409).",
    responses=error_responses(401, 404, 409, 422, e409="The job has already finished."),
)
def cancel_job(
    job_id: JobIdDep, owner: CurrentOwner, session: SessionDep, request: Request
) -> JobPublic:
    job = repository.get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    if job.is_terminal:
        raise ApiError(
            409,
            f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled",
        )
    job = repository.request_cancel(session=session, owner=owner, job_id=job_id)
    session.commit()
    if job is None:  # deleted meanwhile
        raise ApiError(404, f"no job with id {job_id!r}")
    return job_public(job, request)
