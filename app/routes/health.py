"""``/healthz`` (the process answers) and ``/readyz`` (its database and broker answer).

Neither needs an API key. ``/readyz`` runs ``SELECT 1`` and, when the queue has a ``ping()``,
calls it; a failure is a 503 naming what failed.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import literal, select

from app.deps import QueueDep, SessionDep
from app.errors import error_response, error_responses
from app.schemas import Health, Readiness

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness",
    response_description="The process is alive.",
    description="200 while the process serves requests; checks nothing else.",
)
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    response_description="The database and the broker answer.",
    description="200 when the database answers `SELECT 1` and the job queue's broker answers "
    "its ping (a queue without `ping` is not checked); 503 naming what failed otherwise.",
    responses=error_responses(503),
)
def readyz(session: SessionDep, queue: QueueDep) -> Readiness | JSONResponse:
    checks: dict[str, str] = {}
    failed: dict[str, str] = {}
    try:
        session.execute(select(literal(1))).scalar_one()
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readiness: database unreachable: %s", exc)
        failed["database"] = f"database: not reachable ({type(exc).__name__})"
    ping = getattr(queue, "ping", None)
    if not callable(ping):
        checks["broker"] = "not configured"
    else:
        try:
            answer = ping()
            if answer is False:
                raise ConnectionError("ping returned False")
            checks["broker"] = "ok"
        except Exception as exc:
            log.warning("readiness: broker unreachable: %s", exc)
            failed["broker"] = f"broker: not reachable ({type(exc).__name__}: {exc})"
    if failed:
        return error_response(503, "; ".join(failed.values()), next(iter(failed)))
    return Readiness(status="ok", checks=checks)
