"""``/recommendations/{job_id}``: the result of a job that has succeeded.

The body is the engine's JSON (``models.schema.Recommendation``), validated on the way out.
A recommendation never changes once its job has succeeded, so it is validated and rendered once
per process and the bytes are kept (:class:`app.caches.RecommendationCache`); the job's status
and owner are still read from the database on every request.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import repository
from app.caches import RecommendationCache
from app.deps import CurrentOwner, JobIdDep, SessionDep
from app.errors import ApiError, error_responses
from app.tables import Job
from models.schema import Recommendation

__all__ = ["not_ready_message", "router"]

router = APIRouter(prefix="/recommendations", tags=["recommendations"])


def not_ready_message(job: Job) -> str:
    """Why a job has no recommendation (yet), naming its status."""
    if job.status == "queued":
        return f"job {job.id} is queued; the recommendation is ready when it has succeeded"
    if job.status == "running":
        stage = f"stage {job.stage}, " if job.stage else ""
        cancel = ", cancel requested" if job.cancel_requested else ""
        return (
            f"job {job.id} is running ({stage}{round(job.progress * 100)}%{cancel}); "
            "the recommendation is ready when it has succeeded"
        )
    if job.status == "failed":
        reason = f" ({job.error})" if job.error else ""
        return f"job {job.id} failed{reason}; it has no recommendation"
    return f"job {job.id} is {job.status}; it has no recommendation"


@router.get(
    "/{job_id}",
    name="get_recommendation",
    response_model=Recommendation,
    summary="Get a job's recommendation",
    response_description="The recommendation (models/schema.py).",
    description="The recommendation of a job that has succeeded: the recommended grouping, a "
    "verdict per group with its evidence, per-task and per-pair measurements, candidate "
    "scores and (with `verify`) the multi-task versus single-task comparison. Asked before "
    "the job has succeeded, the answer is a 409 naming the job's status and progress.",
    responses=error_responses(
        401,
        404,
        409,
        422,
        e409="The job has not succeeded (yet); the message says where it stands.",
    ),
)
def get_recommendation(
    job_id: JobIdDep, owner: CurrentOwner, session: SessionDep, request: Request
) -> Response:
    cache: RecommendationCache = request.app.state.recommendations
    if repository.get_job_status(session=session, owner=owner, job_id=job_id) == "succeeded":
        rendered = cache.get(job_id)
        if rendered is not None:
            return Response(rendered, media_type="application/json")
    job = repository.get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    if job.status != "succeeded":
        raise ApiError(409, not_ready_message(job))
    stored = repository.get_recommendation(session=session, owner=owner, job_id=job_id)
    if stored is None:
        raise ApiError(404, f"job {job_id} succeeded but no recommendation is stored for it")
    # As FastAPI renders a response_model (by alias), once.
    rendered = Recommendation.model_validate(stored.body).model_dump_json(by_alias=True).encode()
    cache.put(job_id, rendered)
    return Response(rendered, media_type="application/json")
