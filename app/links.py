"""OpenAPI links between the operations (a client, or schemathesis's stateful tests, can follow
them): a dataset leads to a job on it, a job to its state, its cancel, its recommendation and
report. Operation ids are the route names (``create_app`` sets them).

``CreateJob``'s ``requestBody`` is a partial body whose values are runtime expressions: a client
(and schemathesis, which merges it into the body it generates) fills in ``dataset_id`` and adds
the fields it chooses (``text_column``, ``tasks``, ...)."""

from __future__ import annotations

from typing import Any

__all__ = ["DATASET_LINKS", "JOB_LINKS"]


def _job(operation: str, description: str) -> dict[str, Any]:
    return {
        "operationId": operation,
        "parameters": {"job_id": "$response.body#/id"},
        "description": description,
    }


DATASET_LINKS: dict[str, Any] = {
    "CreateJob": {
        "operationId": "create_job",
        "requestBody": {"dataset_id": "$response.body#/id"},
        "description": "Submit a job on this dataset (`dataset_id`).",
    },
    "GetDataset": {
        "operationId": "get_dataset",
        "parameters": {"dataset_id": "$response.body#/id"},
        "description": "This dataset.",
    },
    "DeleteDataset": {
        "operationId": "delete_dataset",
        "parameters": {"dataset_id": "$response.body#/id"},
        "description": "Delete this dataset.",
    },
}

JOB_LINKS: dict[str, Any] = {
    "GetJob": _job("get_job", "Where this job stands."),
    "CancelJob": _job("cancel_job", "Cancel this job."),
    "GetRecommendation": _job("get_recommendation", "This job's recommendation."),
    "GetReport": _job("get_report", "This job's report page."),
}
