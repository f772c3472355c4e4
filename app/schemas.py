"""Request and response bodies of the REST API (pydantic), each field described with an example.

These models are the API's contract as published in ``/openapi.json`` and ``/docs``. The
recommendation itself is ``models.schema.Recommendation`` (the engine's JSON contract).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

from models.data import MAX_COLUMN_NAME

__all__ = [
    "TASK_UNION_TAGS",
    "DatasetPublic",
    "DatasetsPublic",
    "ErrorBody",
    "ErrorResponse",
    "Health",
    "JobCreate",
    "JobLinks",
    "JobPublic",
    "JobsPublic",
    "Readiness",
    "ResolvedTask",
    "TaskItem",
    "TaskRef",
    "TrainingSettings",
]

_UUID_EXAMPLE = "3f2b8c1e-9a4d-4e57-8c0b-2d6f1a7e9b10"
_JOB_EXAMPLE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
_TIME_EXAMPLE = "2025-01-02T03:04:05.123456Z"


def _dataset_uuid(value: str) -> str:
    """A dataset id in the canonical form the store keys by (lower case, hyphenated), so an id
    written in another UUID spelling finds its dataset, as it does at ``GET /datasets/{id}``."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"must be a dataset id, a UUID such as {_UUID_EXAMPLE}") from None


DatasetId = Annotated[str, AfterValidator(_dataset_uuid)]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Stage = Literal[
    "prepare", "finetune", "similarity", "alignment", "grouping", "verification", "done"
]


class _Body(BaseModel):
    """Request bodies refuse unknown keys: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# errors


class ErrorBody(BaseModel):
    """What went wrong."""

    status: int = Field(description="The HTTP status code, repeated.", examples=[422])
    field: str | None = Field(
        description="The request field at fault as a dotted path with list indices "
        "(`training.lr`, `tasks[1].column`), or null when no single field is.",
        examples=["training.lr"],
    )
    message: str = Field(
        description="A sentence naming the field and the problem, fit to show to a person.",
        examples=["training.lr: Input should be greater than 0"],
    )


class ErrorResponse(BaseModel):
    """Every error answer of the API has this shape."""

    error: ErrorBody = Field(
        description="The error.",
        examples=[
            {
                "status": 422,
                "field": "training.lr",
                "message": "training.lr: Input should be greater than 0",
            }
        ],
    )


# --------------------------------------------------------------------------------------------
# datasets


class DatasetPublic(BaseModel):
    """An uploaded dataset and what was learned reading it."""

    id: str = Field(description="The dataset's id (a UUID).", examples=[_UUID_EXAMPLE])
    filename: str = Field(
        description="The name of the uploaded file; it decided the format.",
        examples=["tickets.csv"],
    )
    format: Literal["csv", "jsonl", "parquet"] = Field(
        description="The file format: `csv` (UTF-8, comma-separated, header row), `jsonl` "
        "(one JSON object per line; also `.ndjson`) or `parquet`.",
        examples=["csv"],
    )
    size_bytes: int = Field(description="Size of the stored file in bytes.", examples=[48213])
    sha256: str = Field(
        description="SHA-256 of the file's bytes, hexadecimal.", examples=["9f86d081" * 8]
    )
    row_count: int = Field(description="Number of data rows (header excluded).", examples=[800])
    columns: list[str] = Field(
        description="Every column, in file order.",
        examples=[["text", "product", "severity", "channel"]],
    )
    label_columns: dict[str, dict[str, int]] = Field(
        description="Candidate label columns (2 to max_classes_per_task distinct values, one of "
        "them repeated) with each class and its count, most frequent first. Any of these "
        "can be a task of a job.",
        examples=[{"product": {"billing": 410, "search": 390}, "channel": {"email": 500}}],
    )
    missing_labels: dict[str, int] = Field(
        description="For each label column, the rows that have no label in it; a task leaves "
        "those rows out of its training and validation data. Missing: in CSV, empty cells and "
        "the usual spellings of a missing value (`NA`, `N/A`, `NaN`, `null`, `None`, `#N/A`, "
        "...; a class meant to be spelt so must be spelt otherwise); in JSONL and Parquet, "
        "null, NaN and empty or blank strings.",
        examples=[{"product": 0, "channel": 300}],
    )
    created_at: datetime = Field(
        description="When the dataset was uploaded (UTC).", examples=[_TIME_EXAMPLE]
    )


class DatasetsPublic(BaseModel):
    """One page of datasets, newest first."""

    data: list[DatasetPublic] = Field(description="The datasets of this page.", examples=[[]])
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page.",
        examples=["WyIyMDI1LTAxLTAyVDAzOjA0OjA1KzAwOjAwIiwgIjNmMmIiXQ"],
    )


# --------------------------------------------------------------------------------------------
# jobs: request


class TrainingSettings(_Body):
    """Fine-tuning settings shared by every model of the job. Integers must be JSON integers
    (``3.0``, ``true`` or ``"3"`` is refused, not read as 3 or 1), and rates finite numbers."""

    epochs: int = Field(
        strict=True,
        default=3,
        ge=1,
        le=50,
        description="Epochs of each single-task fine-tune.",
        examples=[3],
    )
    max_steps: int | None = Field(
        strict=True,
        default=None,
        ge=1,
        le=100_000,
        description="Caps the optimiser steps of each fine-tune; null: no cap.",
        examples=[200],
    )
    step_fraction: float = Field(
        allow_inf_nan=False,
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Fast mode: every model (single-task fine-tunes, and the multi-task models "
        "of verification) trains for this share of its steps, learning-rate schedule included "
        "(Standley et al.'s early-stopping approximation). 1: full training. What 0.25 costs in "
        "verdict accuracy is measured in the README, 'How good is the verdict?'.",
        examples=[1.0],
    )
    lr: float = Field(
        allow_inf_nan=False,
        default=1e-4,
        gt=0.0,
        le=0.1,
        description="AdamW learning rate (0 < lr ≤ 0.1).",
        examples=[0.0001],
    )
    batch_size: int = Field(
        strict=True,
        default=32,
        ge=1,
        le=256,
        description="Texts per training batch.",
        examples=[32],
    )
    max_length: int = Field(
        strict=True,
        default=128,
        ge=8,
        le=512,
        description="Tokens kept per text (longer texts are truncated).",
        examples=[128],
    )
    probe_size: int = Field(
        strict=True,
        default=1024,
        ge=4,
        le=8192,
        description="Texts on which every model's representations are compared (CKA). Set "
        "explicitly, it may not exceed the tasks' distinct training texts; left at the "
        "default, fewer are used when the data has fewer.",
        examples=[1024],
    )
    seed: int = Field(
        strict=True,
        default=0,
        ge=0,
        le=2**31 - 1,
        description="Seeds the train/validation split, the probe set and training.",
        examples=[0],
    )
    class_weights: Literal["none", "balanced"] = Field(
        default="none",
        description="How each task's cross-entropy weighs its classes. `none`: every example "
        "alike. `balanced`: class k weighs n / (K n_k) on the task's training split, so that a "
        "model of an imbalanced task is not rewarded for predicting its majority class. Applies "
        "to every model of the job. Use it when a task's `stl.baseline_macro_f1` is close to its "
        "`stl.macro_f1` (the single-task model learnt little).",
        examples=["none"],
    )


class TaskRef(_Body):
    """A task given as an object: a label column of a dataset, under a name."""

    dataset_id: DatasetId | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The dataset holding the label column; null: the job's `dataset_id`.",
        examples=[_UUID_EXAMPLE],
    )
    column: str = Field(
        min_length=1,
        max_length=MAX_COLUMN_NAME,
        description="The label column.",
        examples=["severity"],
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The task's name in the job and the recommendation; null: the column name. "
        "Names must be unique in a job.",
        examples=["severity_tickets"],
    )
    text_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COLUMN_NAME,
        description="The text column of this task's dataset; null: the job's `text_column`. "
        "A dataset has one text column per job.",
        examples=["text"],
    )


TASK_UNION_TAGS = frozenset({"label_column", "task_object"})
"""Union tags pydantic puts into error locations of a task; error messages leave them out."""


def _task_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "label_column"
    if isinstance(value, dict | TaskRef):
        return "task_object"
    return None


TaskItem = Annotated[
    Annotated[str, Tag("label_column"), Field(min_length=1, max_length=MAX_COLUMN_NAME)]
    | Annotated[TaskRef, Tag("task_object")],
    Discriminator(
        _task_kind,
        custom_error_type="task_type",
        custom_error_message="a task is a label column name (string) or an object "
        '{"dataset_id", "column", "name", "text_column"}',
    ),
]


class JobCreate(_Body):
    """An analysis to run: which tasks, which model, how to train, what to compare."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": _UUID_EXAMPLE,
                    "text_column": "text",
                    "tasks": ["product", "severity", "channel"],
                    "model": "minilm-l6",
                    "training": {"epochs": 3, "lr": 0.0001},
                    "candidate_task_sets": [[["product", "severity"], ["channel"]]],
                    "verify": False,
                }
            ]
        },
    )

    dataset_id: DatasetId = Field(
        min_length=1,
        max_length=100,
        description="The dataset whose label columns are the tasks (tasks given as objects may "
        "name other datasets).",
        examples=[_UUID_EXAMPLE],
    )
    text_column: str = Field(
        min_length=1,
        max_length=MAX_COLUMN_NAME,
        description="The column of `dataset_id` holding the texts.",
        examples=["text"],
    )
    tasks: list[TaskItem] = Field(
        min_length=2,
        max_length=1000,
        description="At least 2 tasks (at most max_tasks_per_job). Each is a label column "
        "name of `dataset_id`, or an object naming a column of any of your datasets.",
        examples=[["product", "severity", {"dataset_id": _UUID_EXAMPLE, "column": "topic"}]],
    )
    model: str = Field(
        default="minilm-l6",
        min_length=1,
        max_length=255,
        description="A registered model name (the server's registry; paths are not accepted).",
        examples=["minilm-l6"],
    )
    training: TrainingSettings = Field(
        default_factory=TrainingSettings,
        description="Fine-tuning settings; omitted keys take their defaults.",
        examples=[{"epochs": 3, "lr": 0.0001, "batch_size": 32}],
    )
    candidate_task_sets: list[list[list[str]]] | None = Field(
        default=None,
        max_length=50,
        description="Groupings of your own to score beside the recommendation: each is a list "
        "of groups, each a list of task names. Tasks a candidate leaves out keep their own "
        "single-task model.",
        examples=[[[["product", "severity"], ["channel"]]]],
    )
    verify: bool = Field(
        strict=True,
        default=False,
        description="Also train the multi-task model of every group discussed and compare it "
        "with the single-task models on held-out data (slower).",
        examples=[False],
    )
    max_groups: int | None = Field(
        strict=True,
        default=None,
        ge=1,
        description="A budget of models: the recommendation has at most this many groups "
        "(the least-violating grouping, marked as such, when no passing one fits).",
        examples=[2],
    )


# --------------------------------------------------------------------------------------------
# jobs: response


class ResolvedTask(BaseModel):
    """A task of a job, as resolved from the request."""

    name: str = Field(description="The task's name in the job.", examples=["severity"])
    dataset_id: str = Field(description="The dataset of the task.", examples=[_UUID_EXAMPLE])
    column: str = Field(description="The label column.", examples=["severity"])
    text_column: str = Field(description="The dataset's text column.", examples=["text"])


class JobLinks(BaseModel):
    """Where to go next (paths on this server)."""

    self: str = Field(description="This job.", examples=[f"/jobs/{_JOB_EXAMPLE}"])
    cancel: str = Field(
        description="POST here to cancel the job.", examples=[f"/jobs/{_JOB_EXAMPLE}/cancel"]
    )
    recommendation: str = Field(
        description="The recommendation, once the job has succeeded.",
        examples=[f"/recommendations/{_JOB_EXAMPLE}"],
    )


class JobPublic(BaseModel):
    """An analysis job: its request, where it stands, and links."""

    id: str = Field(description="The job's id (a UUID).", examples=[_JOB_EXAMPLE])
    status: JobStatus = Field(
        description="queued → running → succeeded | failed | cancelled.", examples=["running"]
    )
    stage: Stage | None = Field(
        description="The pipeline stage being run (null before the first).",
        examples=["finetune"],
    )
    progress: float = Field(description="Share of the work done, 0..1.", examples=[0.42])
    cancel_requested: bool = Field(
        description="A cancel was requested; a running job stops at its next check.",
        examples=[False],
    )
    error: str | None = Field(
        description="Why the job failed (null unless failed).", examples=[None]
    )
    attempts: int = Field(description="How many times a worker started the job.", examples=[1])
    model: str = Field(description="The registered model name.", examples=["minilm-l6"])
    tasks: list[ResolvedTask] = Field(
        description="The job's tasks, resolved.",
        examples=[
            [
                {
                    "name": "severity",
                    "dataset_id": _UUID_EXAMPLE,
                    "column": "severity",
                    "text_column": "text",
                }
            ]
        ],
    )
    dataset_ids: list[str] = Field(
        description="The datasets the job reads.", examples=[[_UUID_EXAMPLE]]
    )
    request: dict[str, Any] = Field(
        description="The normalised request (defaults filled in, tasks resolved).",
        examples=[{"model": "minilm-l6", "verify": False}],
    )
    timings: dict[str, float] = Field(
        description="Seconds spent per finished stage.", examples=[{"prepare": 0.8}]
    )
    created_at: datetime = Field(
        description="When the job was submitted.", examples=[_TIME_EXAMPLE]
    )
    started_at: datetime | None = Field(
        description="When a worker first started it.", examples=[_TIME_EXAMPLE]
    )
    finished_at: datetime | None = Field(
        description="When it reached a terminal status.", examples=[None]
    )
    links: JobLinks = Field(
        description="Related resources.",
        examples=[
            {
                "self": f"/jobs/{_JOB_EXAMPLE}",
                "cancel": f"/jobs/{_JOB_EXAMPLE}/cancel",
                "recommendation": f"/recommendations/{_JOB_EXAMPLE}",
            }
        ],
    )


class JobsPublic(BaseModel):
    """One page of jobs, newest first."""

    data: list[JobPublic] = Field(description="The jobs of this page.", examples=[[]])
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page.",
        examples=["WyIyMDI1LTAxLTAyVDAzOjA0OjA1KzAwOjAwIiwgIjdjOWUiXQ"],
    )


# --------------------------------------------------------------------------------------------
# health


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"] = Field(description="Always `ok`.", examples=["ok"])


class Readiness(BaseModel):
    """The process can serve: its database and broker answer."""

    status: Literal["ok"] = Field(description="`ok` when every check passed.", examples=["ok"])
    checks: dict[str, str] = Field(
        description="Each dependency and its state (`ok`, or `not configured`).",
        examples=[{"database": "ok", "broker": "ok"}],
    )
