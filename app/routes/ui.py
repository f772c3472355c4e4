"""``/ui``: the pages a browser opens: sign in, the owner's jobs with live progress.

Authentication follows the API's: the API key is entered once on ``/ui/login``; the session
cookie it sets (HttpOnly, SameSite=Lax, Secure over HTTPS) holds a signed token valid for
``session_ttl_s`` that names the key, never the key itself. Revoking the key ends the session.
The pages, the report and its downloads accept it (:data:`app.deps.PageOwner`); no route that
changes anything does. Sign-in and sign-out refuse forms posted from another site.
These routes are for browsers and are left out of the OpenAPI document; the report
(``/recommendations/{id}/report``) is in it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import repository
from app.deps import KEY_COOKIE, PageOwner, SessionDep
from app.errors import ApiError
from app.pages import login_location, login_page, render, safe_next
from app.settings import Settings
from app.tables import JOB_STATUSES, ApiKey, Job, utcnow

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_STATE_IDS = 100


def _live_key(session: Session, key: str) -> ApiKey | None:
    row = repository.authenticate(session=session, key=key)
    session.commit()
    return row


def _row(job: Job) -> dict[str, Any]:
    stored = job.request or {}
    return {
        "id": job.id,
        "status": job.status,
        "stage": job.stage,
        "progress": float(job.progress or 0.0),
        "cancel_requested": bool(job.cancel_requested),
        "error": job.error,
        "model": job.model,
        "tasks": [t.get("name", "?") for t in stored.get("tasks", [])],
        "created_at": job.created_at,
    }


@router.get("", name="ui_home")
def ui_home() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login", name="ui_login_form")
def login_form(
    request: Request, next: Annotated[str | None, Query(max_length=2000)] = None
) -> Response:
    return login_page(request, next_path=next or "/ui/jobs", status_code=200)


def _cross_site(request: Request) -> bool:
    """A form posted from another site (login CSRF): the browser says so in ``Origin`` or
    ``Sec-Fetch-Site``. Requests that send neither (not a browser) are let through."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.url.netloc


@router.post("/login", name="ui_login")
async def login(
    request: Request,
    session: SessionDep,
    key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/jobs",
) -> Response:
    if _cross_site(request):
        return login_page(request, error="sign in from this site's own page", status_code=403)
    row = await run_in_threadpool(_live_key, session, key.strip()) if key.strip() else None
    if row is None:
        message = "key: that API key is unknown or has been revoked"
        if not key.strip():
            message = "key: enter your API key"
        return login_page(request, next_path=next, error=message, status_code=401)
    settings: Settings = request.app.state.settings
    token = repository.session_token(
        key=row, expires=utcnow() + timedelta(seconds=settings.session_ttl_s)
    )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        KEY_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", name="ui_logout")
def logout(request: Request) -> Response:
    if _cross_site(request):
        return RedirectResponse("/ui/jobs", status_code=303)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/")
    return response


@router.get("/jobs", name="ui_jobs")
def jobs_page(
    request: Request,
    owner: PageOwner,
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=20)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    if owner is None:
        if request.cookies.get(KEY_COOKIE):
            return login_page(request, error="key: the saved API key is no longer valid")
        return RedirectResponse(login_location("/ui/jobs"), status_code=303)
    if status not in (None, "", *JOB_STATUSES):
        status = None
    try:
        rows, next_cursor = repository.list_jobs(
            session=session, owner=owner, status=status or None, limit=20, cursor=cursor
        )
    except ValueError:
        rows, next_cursor = repository.list_jobs(
            session=session, owner=owner, status=status or None, limit=20
        )
    return render(
        request,
        "jobs.html",
        {
            "owner": owner,
            "jobs": [_row(j) for j in rows],
            "next_cursor": next_cursor,
            "status": status or None,
            "statuses": JOB_STATUSES,
        },
    )


@router.get("/jobs/state", name="ui_jobs_state")
def jobs_state(
    owner: PageOwner,
    session: SessionDep,
    ids: Annotated[str, Query(max_length=MAX_STATE_IDS * 40)] = "",
) -> JSONResponse:
    """Status, stage and progress of the owner's jobs named in ``ids`` (comma-separated); ids
    that are not the owner's jobs are left out. The jobs page polls this."""
    if owner is None:
        raise ApiError(
            401,
            "authentication required: sign in at /ui/login",
            headers={"WWW-Authenticate": "Bearer"},
        )
    wanted: list[str] = []
    for part in ids.split(","):
        try:
            wanted.append(str(uuid.UUID(part.strip())))
        except ValueError:
            continue
    data = []
    for job_id in wanted[:MAX_STATE_IDS]:
        job = repository.get_job(session=session, owner=owner, job_id=job_id)
        if job is not None:
            row = _row(job)
            row["created_at"] = row["created_at"].isoformat()
            data.append(row)
    return JSONResponse({"data": data}, headers={"Cache-Control": "no-store"})
