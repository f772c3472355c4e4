"""One JSON shape for every error the API answers, and the handlers that produce it.

Every error body is::

    {"error": {"status": 422, "field": "training.lr",
               "message": "training.lr: Input should be greater than 0"}}

``field`` is the request field at fault as a dotted path with list indices (``tasks[1].column``),
or null; ``message`` always starts with that field when there is one. Routes raise
:class:`ApiError`; FastAPI's request validation errors, Starlette's HTTP exceptions (404 for an
unknown path, 405, ...), :class:`models.data.DataError` escaping a route, a database that cannot
be reached (503 with ``Retry-After``) and unexpected exceptions (500, without internals) are all
turned into the same shape here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import database_unavailable
from app.schemas import TASK_UNION_TAGS, ErrorResponse
from models.data import DataError

__all__ = [
    "ApiError",
    "error_body",
    "error_response",
    "error_responses",
    "format_loc",
    "install_error_handlers",
    "validation_message",
]

log = logging.getLogger(__name__)

_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
_MAX_LISTED = 10
_MAX_MESSAGE = 2000  # characters; a data message may list thousands of values
_DEFAULT_DESCRIPTIONS: dict[int, str] = {
    400: "The request cannot be read.",
    401: "No API key, or an unknown or revoked one (`Authorization: Bearer <key>`).",
    404: "No such resource (or it belongs to another owner).",
    409: "The resource is in a state that does not allow this.",
    413: "The request body is too large.",
    415: "The file format is not supported.",
    422: "A field is invalid; `field` names it.",
    429: "Too many active jobs.",
    503: "A dependency (database, broker) is not reachable.",
}


class ApiError(Exception):
    """An error answer: status, message, and the request field at fault (if any).

    The message is prefixed with ``field`` unless it already starts with it, so that the message
    alone always names the field.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if field and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON of an error answer."""
    return {"error": {"status": status, "field": field, "message": message}}


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error answer in the API's shape (a very long message is cut short)."""
    if len(message) > _MAX_MESSAGE:
        message = f"{message[:_MAX_MESSAGE]}... ({len(message) - _MAX_MESSAGE} more characters)"
    return JSONResponse(error_body(status, message, field), status_code=status, headers=headers)


def format_loc(loc: Sequence[str | int]) -> str:
    """``("body", "tasks", 1, "column")`` → ``"tasks[1].column"``.

    The leading source (body, query, path, header) is dropped unless it is all there is, and
    pydantic's union tags for tasks are left out.
    """
    parts = list(loc)
    if len(parts) > 1 and parts[0] in _SOURCES:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in TASK_UNION_TAGS:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _problem(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid value"))
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":
        detail = ctx.get("error", "")
        return f"the request body is not valid JSON ({detail})" if detail else msg
    if kind == "missing" and tuple(error.get("loc", ())) == ("body",):
        return "a JSON request body is required"
    if kind == "value_error" and msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    return msg


def validation_message(errors: Iterable[Mapping[str, Any]]) -> tuple[str | None, str]:
    """The field of the first error and one message listing every error (with its field)."""
    items: list[str] = []
    first_field: str | None = None
    for error in errors:
        loc = tuple(error.get("loc", ()))
        field = "body" if error.get("type") == "json_invalid" else format_loc(loc)
        if first_field is None:
            first_field = field
        item = f"{field}: {_problem(error)}"
        if item not in items:
            items.append(item)
    if not items:
        return None, "the request is invalid"
    shown = items[:_MAX_LISTED]
    if len(items) > _MAX_LISTED:
        shown.append(f"and {len(items) - _MAX_LISTED} more problems")
    return first_field, "; ".join(shown)


def _http_message(request: Request, exc: StarletteHTTPException) -> str:
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        return f"no such path: {request.url.path}"
    if exc.status_code == 405 and detail == "Method Not Allowed":
        return f"method {request.method} is not allowed on {request.url.path}"
    if exc.status_code == 413 and detail == "Content Too Large":
        return "the request body is too large"
    return detail if isinstance(detail, str) else str(detail)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.field, exc.headers or None)


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    field, message = validation_message(exc.errors())
    return error_response(422, message, field)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    field = getattr(exc, "field", None)
    return error_response(exc.status_code, _http_message(request, exc), field, headers)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(422, str(exc), None)


async def _response_validation(request: Request, exc: Exception) -> JSONResponse:
    log.error("response failed validation on %s %s: %s", request.method, request.url.path, exc)
    return error_response(500, "internal error: the stored result does not match its schema")


RETRY_AFTER_S = 5


async def _database(request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        return await _unexpected(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "the database is not reachable right now; try again shortly",
        None,
        {"Retry-After": str(RETRY_AFTER_S)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(ResponseValidationError, _response_validation)
    app.add_exception_handler(SQLAlchemyError, _database)
    app.add_exception_handler(Exception, _unexpected)


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for error statuses: the shape and a description for each.

    ``descriptions`` override the defaults, keyed ``e404="..."``.
    """
    return {
        code: {
            "model": ErrorResponse,
            "description": descriptions.get(f"e{code}", _DEFAULT_DESCRIPTIONS.get(code, "Error.")),
        }
        for code in codes
    }
