"""``/recommendations/{job_id}``: the result of a job that has succeeded, and its report.

The body is the engine's JSON (``models.schema.Recommendation``), validated on the way out.
A recommendation never changes once its job has succeeded, so it is validated and rendered once
per process and the bytes are kept with the job's owner (:class:`app.caches.RecommendationCache`):
a succeeded job never changes and is never deleted, so the owner's next request is answered from
there without a database read (and, most of the time, by :mod:`app.fastlane` before FastAPI).

``/report`` is the same recommendation as an HTML page (:mod:`app.report`, ``report.html``);
``/heatmaps/{metric}.svg`` and ``/download`` are its downloads. These three also accept the
browser session's cookie (:data:`app.deps.ReaderOwner`), so the page's links work in a browser.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from app import repository
from app.caches import RecommendationCache
from app.deps import (
    CurrentOwner,
    JobIdDep,
    PageOwner,
    ReaderOwner,
    SessionDep,
    sign_in_required,
)
from app.errors import ApiError, error_responses
from app.pages import SECURITY_HEADERS, login_location, message_page, render, report_links
from app.report import heatmap_svg, report_view
from app.tables import Job
from models.schema import Recommendation

__all__ = ["load_recommendation", "not_ready_message", "router"]

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
    return Response(rendered_recommendation(request, session, owner, job_id), media_type=JSON)


JSON = "application/json"


def rendered_recommendation(request: Request, session: Session, owner: str, job_id: str) -> bytes:
    """The owner's recommendation as the API renders it; ApiError 404/409 when there is none."""
    cache: RecommendationCache = request.app.state.recommendations
    rendered = cache.get(job_id, owner)  # a succeeded job's: it cannot have changed
    if rendered is not None:
        return rendered
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
    cache.put(job_id, owner, rendered)
    return rendered


def load_recommendation(
    request: Request, session: Session, owner: str, job_id: str
) -> Recommendation:
    """The owner's recommendation as a model; ApiError 404/409 when there is none."""
    return Recommendation.model_validate_json(
        rendered_recommendation(request, session, owner, job_id)
    )


_HTML = {"text/html": {"schema": {"type": "string"}}}


def _report_responses() -> dict[int | str, dict[str, Any]]:
    # Written out: with an HTML route, FastAPI would file a `model` under text/html.
    error = {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": _HTML},
        303: {"description": "A browser without a valid key: to the sign-in page."},
    }
    for code, description in (
        (401, "No valid API key (not a browser)."),
        (404, "No such job (or another owner's); a page for a browser."),
        (409, "The job has not succeeded (yet); a page for a browser."),
        (422, "A field is invalid; `field` names it."),
    ):
        content = {"application/json": error, **(_HTML if code in (404, 409) else {})}
        responses[code] = {"description": description, "content": content}
    return responses


@router.get(
    "/{job_id}/report",
    name="get_report",
    response_class=HTMLResponse,
    summary="The recommendation as a report page (HTML)",
    response_description="An HTML page (works offline: SVG charts made on the server).",
    description="The verdict and grouping in one sentence; T x T heatmaps of min-layer CKA (the "
    "partial CKA where the verdict reads it: setting rep_measure) and "
    "of gradient cosine (tasks ordered by group, group borders drawn); CKA over layers for "
    "every pair with the limiting layer marked; the single-task metrics; the candidate task "
    "sets scored; with `verify`, the measured multi-task versus single-task deltas beside the "
    "prediction. Opened in a browser (`Accept: text/html`), the key may come from the sign-in "
    "page's session cookie; without a valid key the browser is sent to the sign-in page "
    "(303), and a job that has no report yet is a page saying where it stands (404, 409). "
    "Other clients get the API's JSON errors (401, 404, 409).",
    responses=_report_responses(),
)
def get_report(
    job_id: JobIdDep, owner: PageOwner, session: SessionDep, request: Request
) -> Response:
    browser = "text/html" in request.headers.get("accept", "")
    if owner is None:
        if browser:  # to the sign-in page, and back here after it
            return RedirectResponse(login_location(request.url.path), status_code=303)
        raise sign_in_required()
    try:
        rec = load_recommendation(request, session, owner, job_id)
    except ApiError as exc:
        if not browser:
            raise
        title = "No such job" if exc.status == 404 else "No report yet"
        return message_page(
            request, owner=owner, title=title, message=exc.message, status_code=exc.status
        )
    context = {
        "owner": owner,
        "job": {"id": job_id},
        "links": report_links(job_id),
        "v": report_view(rec),
    }
    response = render(request, "report.html", context)
    response.headers["Vary"] = "Accept, Cookie"
    return response


@router.get(
    "/{job_id}/heatmaps/{metric}.svg",
    name="get_heatmap",
    summary="A heatmap of the report as an SVG file",
    response_description="An SVG image (`image/svg+xml`), sent as a download.",
    description="`metric` is `cka` (min-layer CKA, or partial CKA where the verdict reads it) or "
    "`grad` (gradient cosine): the heatmap of "
    "the report page, one cell per task pair, tasks ordered by group.",
    responses={
        **error_responses(401, 404, 409, 422),
        200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}},
    },
)
def get_heatmap(
    job_id: JobIdDep,
    metric: Annotated[
        Literal["cka", "grad"],
        Path(
            description="`cka` (min-layer CKA, or partial CKA where the verdict reads it) or "
            "`grad` (gradient cosine)."
        ),
    ],
    owner: ReaderOwner,
    session: SessionDep,
    request: Request,
) -> Response:
    rec = load_recommendation(request, session, owner, job_id)
    body = '<?xml version="1.0" encoding="UTF-8"?>\n' + heatmap_svg(rec, metric, standalone=True)
    return Response(
        body,
        media_type="image/svg+xml",
        headers={
            "Content-Disposition": f'attachment; filename="{job_id}-{metric}.svg"',
            **SECURITY_HEADERS,
        },
    )


@router.get(
    "/{job_id}/download",
    name="download_recommendation",
    response_model=Recommendation,
    summary="The recommendation as a JSON file",
    response_description="The recommendation, as `GET /recommendations/{job_id}`, sent as a "
    "download.",
    description="The same body as `GET /recommendations/{job_id}`, with a "
    "`Content-Disposition` that saves it as a file; also accepts the browser session's cookie.",
    responses=error_responses(401, 404, 409, 422),
)
def download_recommendation(
    job_id: JobIdDep, owner: ReaderOwner, session: SessionDep, request: Request
) -> Response:
    return Response(
        rendered_recommendation(request, session, owner, job_id),
        media_type=JSON,
        headers={
            "Content-Disposition": f'attachment; filename="recommendation-{job_id}.json"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
