"""``/datasets``: upload a table, list, read and delete the caller's datasets.

An upload is read and checked completely before anything is stored; its bytes go to the artifact
store (atomically) and its row to the database in one unit: the row is committed only once the
file is in place, and on any failure the file is removed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Annotated, BinaryIO

import pandas as pd
from fastapi import APIRouter, File, Query, Request, Response, UploadFile

from app import repository
from app.deps import CurrentOwner, DatasetIdDep, LimitsDep, SessionDep, StoreDep
from app.errors import ApiError, error_responses
from app.links import DATASET_LINKS
from app.schemas import DatasetPublic, DatasetsPublic
from app.storage import StorageError
from app.tables import Dataset
from models.data import (
    MAX_COLUMN_NAME,
    DataError,
    describe_labels,
    detect_format,
    read_table,
    validate_text_column,
)

__all__ = ["router", "to_public"]

log = logging.getLogger(__name__)
router = APIRouter(prefix="/datasets", tags=["datasets"])

_CHUNK = 1024 * 1024
_MAX_FILENAME = 255


def to_public(dataset: Dataset) -> DatasetPublic:
    """The API's view of a dataset row."""
    return DatasetPublic(
        id=dataset.id,
        filename=dataset.filename,
        format=dataset.format,  # type: ignore[arg-type]  # the table's CHECK constraint
        size_bytes=dataset.size_bytes,
        sha256=dataset.sha256,
        row_count=dataset.row_count,
        columns=list(dataset.columns),
        label_columns=dict(dataset.label_summary),
        missing_labels={
            column: dataset.row_count - sum(counts.values())
            for column, counts in dataset.label_summary.items()
        },
        created_at=dataset.created_at,
    )


def _read_bounded(handle: BinaryIO, limit: int) -> bytes:
    """The whole stream, refusing (413) as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := handle.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the file is larger than the limit of {limit} bytes", field="file")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_has_text_column(frame: pd.DataFrame, name: str) -> None:
    """422 unless some column holds a non-empty string on every row."""
    first_error: DataError | None = None
    for column in frame.columns:
        try:
            validate_text_column(frame, str(column), dataset=name)
            return
        except DataError as exc:
            if first_error is None and "non-text" not in exc.problem:
                first_error = exc
    hint = f" (e.g. {first_error})" if first_error is not None else ""
    raise ApiError(
        422,
        f"dataset {name!r} has no text column: no column holds a non-empty string on every "
        f"row{hint}",
        field="file",
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    summary="Upload a dataset",
    response_description="The dataset as stored, with its columns and candidate label columns.",
    description="Upload a table of texts and labels as multipart form field `file`. The format "
    "comes from the file name: `.csv` (UTF-8, comma-separated, header row), `.jsonl` / "
    "`.ndjson` (one JSON object per line) or `.parquet`. The table must have a text column "
    "(a non-empty string on every row), and every column a unique, non-blank name of at "
    f"most {MAX_COLUMN_NAME} characters (a blank CSV header cell is named `Unnamed: <i>`). The "
    "answer lists the columns and, for each candidate label column, its classes and counts. "
    "Limits: max_upload_bytes, max_rows_per_dataset.",
    responses={
        201: {"links": DATASET_LINKS},
        **error_responses(
            400,
            401,
            413,
            415,
            422,
            e400="The body is not a well-formed multipart document.",
            e422="The file cannot be read as a table.",
        ),
    },
)
def upload_dataset(
    owner: CurrentOwner,
    session: SessionDep,
    store: StoreDep,
    limits: LimitsDep,
    request: Request,
    response: Response,
    file: Annotated[
        UploadFile, File(description="The table: a .csv, .jsonl, .ndjson or .parquet file.")
    ],
) -> DatasetPublic:
    name = os.path.basename((file.filename or "").replace("\\", "/"))
    if len(name) > _MAX_FILENAME:
        raise ApiError(
            422, f"the file name is longer than {_MAX_FILENAME} characters", field="file"
        )
    try:
        fmt = detect_format(name)
    except DataError as exc:
        raise ApiError(415, str(exc), field="file") from None
    data = _read_bounded(file.file, limits.max_upload_bytes)
    try:
        frame = read_table(data, fmt=fmt, name=name, max_rows=limits.max_rows_per_dataset)
    except DataError as exc:
        raise ApiError(422, str(exc), field="file") from None
    _check_has_text_column(frame, name)
    labels = describe_labels(frame, exclude=[], max_classes=limits.max_classes_per_task)

    dataset = repository.create_dataset(
        session=session,
        owner=owner,
        filename=name,
        format=fmt,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        row_count=len(frame),
        columns=[str(c) for c in frame.columns],
        label_summary=labels,
        artifact_path="",
    )
    path = None
    try:
        path = store.put_upload(owner, dataset.id, data, fmt)
        dataset.artifact_path = str(path)
        session.flush()
        session.commit()
    except BaseException:
        session.rollback()
        if path is not None:
            store.delete(path)
        raise
    response.headers["Location"] = request.url_for("get_dataset", dataset_id=dataset.id).path
    return to_public(dataset)


@router.get(
    "",
    response_model=DatasetsPublic,
    summary="List your datasets",
    response_description="One page of datasets.",
    description="Your datasets, newest first, one page at a time: pass the answer's "
    "`next_cursor` as `cursor` for the next page (null on the last page).",
    responses=error_responses(401, 422, e422="`limit` or `cursor` is invalid."),
)
def list_datasets(
    owner: CurrentOwner,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.", examples=[20])] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the previous page.", examples=[None]),
    ] = None,
) -> DatasetsPublic:
    try:
        rows, next_cursor = repository.list_datasets(
            session=session, owner=owner, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise ApiError(422, str(exc), field="cursor") from None
    return DatasetsPublic(data=[to_public(d) for d in rows], next_cursor=next_cursor)


@router.get(
    "/{dataset_id}",
    name="get_dataset",
    response_model=DatasetPublic,
    summary="Get a dataset",
    response_description="The dataset.",
    description="One of your datasets: its columns and candidate label columns.",
    responses=error_responses(401, 404, 422),
)
def get_dataset(
    dataset_id: DatasetIdDep, owner: CurrentOwner, session: SessionDep
) -> DatasetPublic:
    dataset = repository.get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    if dataset is None:
        raise ApiError(404, f"no dataset with id {dataset_id!r}")
    return to_public(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a dataset",
    response_description="Deleted; no body.",
    description="Delete one of your datasets and its file. Refused (409) while a queued or "
    "running job reads it; finished jobs keep their results.",
    responses=error_responses(
        401, 404, 409, 422, e409="A queued or running job reads the dataset."
    ),
)
def delete_dataset(
    dataset_id: DatasetIdDep, owner: CurrentOwner, session: SessionDep, store: StoreDep
) -> Response:
    dataset = repository.get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    if dataset is None:
        raise ApiError(404, f"no dataset with id {dataset_id!r}")
    path = dataset.artifact_path
    outcome = repository.delete_dataset(session=session, owner=owner, dataset_id=dataset_id)
    if outcome is repository.DeleteResult.NOT_FOUND:
        session.rollback()
        raise ApiError(404, f"no dataset with id {dataset_id!r}")
    if outcome is repository.DeleteResult.IN_USE:
        session.rollback()
        raise ApiError(
            409,
            f"dataset {dataset_id} is in use by a queued or running job; cancel the job or "
            "wait until it finishes, then delete the dataset",
        )
    session.commit()
    try:
        store.delete(path)
    except (OSError, StorageError):
        log.warning("dataset %s deleted, but its file %s could not be removed", dataset_id, path)
    return Response(status_code=204)
