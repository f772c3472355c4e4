"""A job row's request JSON → :class:`models.options.JobSpec`, reading its stored datasets.

The request JSON is the API's normalised form (``app/routes/jobs.py``): ``model``, ``tasks``
(``name``, ``dataset_id``, ``column``, ``text_column``), ``datasets`` (``id``, ``filename``,
``format``, ``text_column``), ``training``, ``candidate_task_sets``, ``verify``,
``max_groups``. No torch here.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import Job
from models.data import DataError, read_table
from models.options import TRAINING_KEYS, DatasetSpec, JobSpec, TaskSpec, TrainingConfig
from models.registry import resolve_model

__all__ = ["build_job_spec"]


def _dataset_names(datasets: list[dict[str, Any]]) -> dict[str, str]:
    """Dataset id → the name used in the recommendation: its file name, made unique."""
    names: dict[str, str] = {}
    filenames = [d["filename"] for d in datasets]
    for d in datasets:
        name = d["filename"]
        if filenames.count(name) > 1:
            name = f"{name} ({d['id'][:8]})"
        names[d["id"]] = name
    return names


def build_job_spec(job: Job, settings: Settings, store: ArtifactStore | None = None) -> JobSpec:
    """The job's spec, its datasets read from the artifact store.

    Raises :class:`models.data.DataError` when a dataset's file is gone or unreadable, and
    :class:`models.registry.ModelError` when the model is no longer registered.
    """
    store = store or ArtifactStore(settings.artifacts)
    request: dict[str, Any] = dict(job.request or {})
    rows = {d.id: d for d in job.datasets}
    names = _dataset_names(list(request.get("datasets", [])))
    datasets: list[DatasetSpec] = []
    for entry in request.get("datasets", []):
        row = rows.get(entry["id"])
        name = names[entry["id"]]
        if row is None:
            raise DataError(
                f"dataset {entry['id']} is no longer stored; upload it again", dataset=name
            )
        try:
            data = store.read(row.artifact_path)
        except (OSError, ValueError):
            raise DataError(
                f"the stored file of dataset {entry['id']} cannot be read; upload it again",
                dataset=name,
            ) from None
        frame = read_table(
            data, fmt=entry["format"], name=name, max_rows=settings.max_rows_per_dataset
        )
        datasets.append(DatasetSpec(name=name, frame=frame, text_column=entry["text_column"]))
    tasks = [
        TaskSpec(name=t["name"], dataset=names[t["dataset_id"]], column=t["column"])
        for t in request.get("tasks", [])
    ]
    stored_training = request.get("training") or {}
    training = TrainingConfig(
        **{k: stored_training[k] for k in TRAINING_KEYS if k in stored_training}
    )
    return JobSpec(
        datasets=datasets,
        tasks=tasks,
        model_name=job.model,
        model_dir=resolve_model(job.model, settings.models, allow_path=False),
        training=training,
        analysis=settings.analysis_config(max_groups=request.get("max_groups")),
        candidates=[list(map(list, c)) for c in request.get("candidate_task_sets") or []],
        verify=bool(request.get("verify", False)),
    )
