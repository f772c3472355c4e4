"""The REST API's jobs and recommendations: submission, validation, idempotency, quota, cancel,
pagination, recommendations, and owner isolation over every route (PostgreSQL, rolled back)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app import repository
from app.tables import Job
from models.schema import (
    CandidateGroup,
    CandidateReport,
    GroupReport,
    PairReport,
    Recommendation,
    STLMetrics,
    TaskReport,
    Verdict,
)
from tests.test_api import Api, assert_error, build_api, csv_bytes

pytestmark = pytest.mark.postgres

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def api_factory(session: Session, tmp_path: Path) -> Callable[..., Api]:
    """Build an Api with other limits or another queue (see tests/test_api.py)."""
    return lambda queue=None, **limits: build_api(session, tmp_path, queue, **limits)


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()


def sample_recommendation(names: tuple[str, str] = ("sentiment", "topic")) -> dict[str, Any]:
    """A small recommendation that validates against models.schema.Recommendation."""
    a, b = names
    stl = STLMetrics(macro_f1=0.8, accuracy=0.82, steps=10, seconds=1.5, loss_curve=[0.7, 0.4])
    tasks = [
        TaskReport(
            name=n,
            dataset="tickets.csv",
            column=n,
            n_train=32,
            n_val=8,
            n_missing=0,
            classes=["x", "y"],
            set_aside=[],
            stl=stl,
            cka_to_pretrained=[1.0, 0.9, 0.8],
        )
        for n in names
    ]
    pair = PairReport(
        tasks=(a, b),
        cka_per_layer=[0.9, 0.8, 0.7],
        cka_min=0.7,
        cka_min_layer=2,
        cka_mean=0.8,
        grad_cosine=0.3,
        grad_cosine_per_layer=[0.3, 0.3, 0.3],
        conflict_rate=0.1,
        tag_affinity=(0.01, 0.02),
        affinity=0.5,
        passes=True,
        failures=[],
    )
    group = GroupReport(
        tasks=[a, b],
        origin="recommended",
        origins=["recommended", "all"],
        mtl_matches_stl=True,
        evidence=[f"tasks {a}, {b}: min CKA 0.70 >= 0.60"],
        score=0.5,
        margin=0.1,
    )
    verdict = Verdict(
        kind="single_model",
        summary="one model for both tasks",
        n_models=1,
        feasible=True,
        method="exhaustive",
        notes=[],
        best_candidate=0,
        beats_candidates=False,
    )
    candidate = CandidateReport(
        index=0,
        groups=[CandidateGroup(tasks=[a, b], mtl_matches_stl=True, score=0.5)],
        passes=True,
        n_models=1,
        score=0.5,
        shortfall=0.0,
        best=True,
    )
    return Recommendation(
        settings={"model": "minilm-l6", "probe_size_used": 16},
        tasks=tasks,
        pairs=[pair],
        grouping=[[a, b]],
        groups=[group],
        verdict=verdict,
        candidates=[candidate],
        verification=None,
        timings={"finetune": 3.0},
    ).model_dump(mode="json")


def make_job(api: Api, owner: str = "alice", now: datetime | None = None) -> Job:
    """A queued job written straight through the repository (no API call, no data check)."""
    dataset_ids = [d.id for d in repository.list_datasets(session=api.session, owner=owner)[0]]
    request = {"tasks": [], "datasets": [{"id": d} for d in dataset_ids[:1]]}
    job = repository.create_job(
        session=api.session,
        owner=owner,
        request=request,
        model="minilm-l6",
        request_hash="0" * 64,
        idempotency_key=None,
        dataset_ids=dataset_ids[:1],
        now=now,
    )
    api.session.commit()
    return job


# --------------------------------------------------------------------------------------------
# submission


def test_submit_a_job(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = api.dataset()
    events: list[str] = []
    commit = api.session.commit

    def recording_commit() -> None:
        commit()
        events.append("commit")

    def recording_enqueue(job_id: str) -> None:
        events.append(f"enqueue {job_id}")
        api.queue.enqueued.append(job_id)

    monkeypatch.setattr(api.session, "commit", recording_commit)
    monkeypatch.setattr(api.queue, "enqueue", recording_enqueue)
    response = api.submit(api.job_body(dataset["id"], candidate_task_sets=[[["topic", "urgent"]]]))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert events == ["commit", f"enqueue {job['id']}"]  # enqueued once, after the commit
    assert api.queue.enqueued == [job["id"]]
    assert job["status"] == "queued" and job["progress"] == 0 and job["stage"] is None
    assert job["attempts"] == 0 and job["error"] is None and job["cancel_requested"] is False
    assert job["model"] == "minilm-l6"
    assert job["dataset_ids"] == [dataset["id"]]
    assert job["links"] == {
        "self": f"/jobs/{job['id']}",
        "cancel": f"/jobs/{job['id']}/cancel",
        "recommendation": f"/recommendations/{job['id']}",
    }
    assert [t["name"] for t in job["tasks"]] == ["sentiment", "topic", "urgent"]
    stored = api.session.get(Job, job["id"])
    assert stored is not None and stored.owner == "alice"
    assert stored.dataset_ids == [dataset["id"]]
    request = stored.request
    assert request["tasks"][0] == {
        "name": "sentiment",
        "dataset_id": dataset["id"],
        "column": "sentiment",
        "text_column": "text",
    }
    assert request["training"] == {
        "epochs": 1,
        "max_steps": None,
        "step_fraction": 1.0,
        "lr": 0.0001,
        "batch_size": 32,
        "max_length": 128,
        "probe_size": 16,
        "seed": 0,
        "class_weights": "none",
    }
    assert request["candidate_task_sets"] == [[["sentiment"], ["topic", "urgent"]]]
    assert request["datasets"] == [
        {"id": dataset["id"], "filename": "tickets.csv", "format": "csv", "text_column": "text"}
    ]
    got = api.client.get(f"/jobs/{job['id']}", headers=api.auth())
    assert got.status_code == 200 and got.json() == job


def test_submit_tasks_from_several_datasets(api: Api) -> None:
    first = api.dataset()
    second = api.dataset(filename="more.csv")
    body = api.job_body(
        first["id"],
        tasks=[
            "sentiment",
            {"dataset_id": second["id"], "column": "sentiment", "name": "sentiment_more"},
            {"dataset_id": second["id"], "column": "topic"},
        ],
    )
    response = api.submit(body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert sorted(job["dataset_ids"]) == sorted([first["id"], second["id"]])
    assert [(t["name"], t["dataset_id"]) for t in job["tasks"]] == [
        ("sentiment", first["id"]),
        ("sentiment_more", second["id"]),
        ("topic", second["id"]),
    ]


def test_a_dataset_id_in_another_uuid_spelling_finds_its_dataset(api: Api) -> None:
    """Upper case or without hyphens, as ``GET /datasets/{id}`` accepts it."""
    dataset = api.dataset()
    spelled = dataset["id"].upper().replace("-", "")
    body = api.job_body(spelled)
    body["tasks"] = [body["tasks"][0], {"dataset_id": spelled, "column": body["tasks"][1]}]
    response = api.submit(body)
    assert response.status_code == 202, response.text
    job = api.client.get(f"/jobs/{response.json()['id']}", headers=api.auth()).json()
    assert job["dataset_ids"] == [dataset["id"]]


@pytest.mark.parametrize("field", ["lr", "step_fraction"])
def test_a_non_finite_number_is_refused_as_such(api: Api, field: str) -> None:
    """Python's JSON parser reads NaN and Infinity; a bound check would call NaN out of range."""
    dataset = api.dataset()
    for value in (float("nan"), float("inf")):
        body = api.job_body(dataset["id"], training={field: value})
        response = api.client.post(
            "/jobs",
            content=json.dumps(body),
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert_error(response, 422, f"training.{field}", "finite number")


def test_the_default_probe_size_adapts_to_small_data(api: Api) -> None:
    dataset = api.dataset()
    body = api.job_body(dataset["id"], training={})
    assert api.submit(body).status_code == 202


INVALID: list[tuple[str, dict[str, Any], int, str | None, list[str]]] = [
    ("unknown model", {"model": "bert"}, 422, "model", ["'bert'", "minilm-l6, tiny"]),
    ("model path", {"model": "/tmp"}, 422, "model", ["paths are not accepted"]),
    ("unknown dataset", {"dataset_id": MISSING}, 422, "dataset_id", ["no dataset with id"]),
    ("malformed dataset", {"dataset_id": "abc"}, 422, "dataset_id", ["must be a dataset id"]),
    ("NUL in dataset", {"dataset_id": "x\u0000"}, 422, "dataset_id", ["must be a dataset id"]),
    (
        "task dataset",
        {"tasks": ["topic", {"dataset_id": "abc", "column": "urgent"}]},
        422,
        "tasks[1].dataset_id",
        ["must be a dataset id"],
    ),
    ("text column", {"text_column": "body"}, 422, "text_column", ["'body' not found", "'text'"]),
    ("one task", {"tasks": ["topic"]}, 422, "tasks", ["at least 2"]),
    ("no tasks", {"tasks": []}, 422, "tasks", ["at least 2"]),
    ("unknown column", {"tasks": ["topic", "nope"]}, 422, "tasks[1]", ["'nope' not found"]),
    ("duplicate", {"tasks": ["topic", "topic"]}, 422, "tasks[1]", ["already used by tasks[0]"]),
    ("one class", {"tasks": ["topic", "constant"]}, 422, "tasks[1]", ["'constant'", "1 class"]),
    ("rare class", {"tasks": ["topic", "rare"]}, 422, "tasks[1]", ["set", "aside", "'b': 2"]),
    ("id column", {"tasks": ["topic", "ident"]}, 422, "tasks[1]", ["'ident'"]),
    ("text as label", {"tasks": ["topic", "text"]}, 422, "tasks[1]", ["text column"]),
    ("task type", {"tasks": ["topic", 3]}, 422, "tasks[1]", ["label column name"]),
    ("task object", {"tasks": ["topic", {"col": "x"}]}, 422, "tasks[1].column", ["required"]),
    ("empty name", {"tasks": ["topic", ""]}, 422, "tasks[1]", ["at least 1 character"]),
    ("lr zero", {"training": {"lr": 0}}, 422, "training.lr", ["greater than 0"]),
    ("lr big", {"training": {"lr": 0.5}}, 422, "training.lr", ["less than or equal to 0.1"]),
    ("epochs true", {"training": {"epochs": True}}, 422, "training.epochs", ["valid integer"]),
    ("epochs text", {"training": {"epochs": "3"}}, 422, "training.epochs", ["valid integer"]),
    ("max groups true", {"max_groups": True}, 422, "max_groups", ["valid integer"]),
    ("verify text", {"verify": "yes"}, 422, "verify", ["valid boolean"]),
    ("epochs", {"training": {"epochs": 0}}, 422, "training.epochs", ["greater than or equal"]),
    ("epochs big", {"training": {"epochs": 51}}, 422, "training.epochs", ["less than or equal"]),
    ("max steps", {"training": {"max_steps": 0}}, 422, "training.max_steps", ["greater"]),
    ("fast 0", {"training": {"step_fraction": 0}}, 422, "training.step_fraction", ["greater"]),
    ("fast 2", {"training": {"step_fraction": 2}}, 422, "training.step_fraction", ["less"]),
    ("batch", {"training": {"batch_size": 257}}, 422, "training.batch_size", ["256"]),
    ("length", {"training": {"max_length": 7}}, 422, "training.max_length", ["8"]),
    ("seed", {"training": {"seed": -1}}, 422, "training.seed", ["greater than or equal to 0"]),
    ("seed big", {"training": {"seed": 2**31}}, 422, "training.seed", ["2147483647"]),
    ("probe small", {"training": {"probe_size": 3}}, 422, "training.probe_size", ["4"]),
    ("probe data", {"training": {"probe_size": 64}}, 422, "training.probe_size", ["at most 3"]),
    ("typo", {"training": {"epoch": 2}}, 422, "training.epoch", ["Extra inputs"]),
    (
        "weights",
        {"training": {"class_weights": "inverse"}},
        422,
        "training.class_weights",
        ["'none' or 'balanced'"],
    ),
    ("extra key", {"priority": 1}, 422, "priority", ["Extra inputs"]),
    ("max groups", {"max_groups": 0}, 422, "max_groups", ["greater than or equal to 1"]),
    (
        "candidate task",
        {"candidate_task_sets": [[["topic", "nope"]]]},
        422,
        "candidate_task_sets[0]",
        ["unknown task 'nope'"],
    ),
    (
        "candidate twice",
        {"candidate_task_sets": [[["topic"]], [["topic", "urgent"], ["urgent"]]]},
        422,
        "candidate_task_sets[1]",
        ["'urgent' appears more than once"],
    ),
    (
        "candidate empty group",
        {"candidate_task_sets": [[[]]]},
        422,
        "candidate_task_sets[0]",
        ["empty"],
    ),
]


@pytest.mark.parametrize(
    ("case", "overrides", "status", "field", "fragments"),
    INVALID,
    ids=[c[0] for c in INVALID],
)
def test_invalid_jobs_are_refused_before_anything_is_written(
    api: Api,
    case: str,
    overrides: dict[str, Any],
    status: int,
    field: str | None,
    fragments: list[str],
) -> None:
    dataset = api.dataset()
    body = api.job_body(dataset["id"], tasks=["sentiment", "topic", "urgent"])
    for key, value in overrides.items():
        if key == "training":
            body["training"] = {**body["training"], **value}
        else:
            body[key] = value
    if case == "probe data":
        body["tasks"] = ["sentiment", "topic"]
        body["training"]["probe_size"] = 41  # there are only 40 texts
        fragments = ["41 is more than the", "distinct training texts of the tasks"]
    before = api.counts()
    assert_error(api.submit(body), status, field, *fragments)
    assert api.counts() == before
    assert api.queue.enqueued == []


def test_task_object_errors_name_the_object_field(api: Api) -> None:
    first = api.dataset()
    second = api.dataset(filename="more.csv")
    bob = api.dataset(who="bob")
    cases = [
        ({"dataset_id": MISSING, "column": "topic"}, "tasks[1].dataset_id", "no dataset"),
        ({"dataset_id": bob["id"], "column": "topic"}, "tasks[1].dataset_id", "no dataset"),
        ({"dataset_id": second["id"], "column": "nope"}, "tasks[1].column", "'nope' not found"),
        (
            {"dataset_id": second["id"], "column": "topic", "text_column": "nope"},
            "tasks[1].text_column",
            "'nope' not found",
        ),
        (
            {"column": "topic", "text_column": "sentiment"},
            "tasks[1].text_column",
            "one text column per job",
        ),
        ({"column": "urgent", "name": "sentiment"}, "tasks[1]", "already used by tasks[0]"),
    ]
    before = api.counts()
    for task, field, fragment in cases:
        body = api.job_body(first["id"], tasks=["sentiment", task])
        assert_error(api.submit(body), 422, field, fragment)
    assert api.counts() == before and api.queue.enqueued == []


def test_too_many_tasks(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_tasks_per_job=2)
    dataset = api.dataset()
    response = api.submit(api.job_body(dataset["id"]))
    assert_error(response, 422, "tasks", "3 tasks, more than the limit of 2")


def test_too_many_classes(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_classes_per_task=3)
    dataset = api.dataset()
    assert "topic" not in dataset["label_columns"]  # 4 classes: not proposed
    response = api.submit(api.job_body(dataset["id"]))
    assert_error(response, 422, "tasks[1]", "4 classes, more than the limit of 3")


def test_active_job_quota(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_active_jobs_per_owner=2)
    dataset = api.dataset()
    body = api.job_body(dataset["id"])
    first = api.submit(body).json()
    assert api.submit(body).status_code == 202
    before = api.counts()
    assert_error(api.submit(body), 429, None, "2 active", "limit is 2")
    assert api.counts() == before
    api.dataset(who="bob")  # quotas are per owner
    bob_dataset = api.client.get("/datasets", headers=api.auth("bob")).json()["data"][0]
    assert api.submit(api.job_body(bob_dataset["id"]), who="bob").status_code == 202
    api.client.post(f"/jobs/{first['id']}/cancel", headers=api.auth())
    assert api.submit(body).status_code == 202
    assert len(api.queue.enqueued) == 4


def test_idempotency_key(api: Api) -> None:
    dataset = api.dataset()
    body = api.job_body(dataset["id"])
    first = api.submit(body, **{"Idempotency-Key": "abc"})
    assert first.status_code == 202
    # The same request, spelt differently (defaults written out, keys reordered).
    same = dict(reversed(list(body.items())))
    same["training"] = {**body["training"], "lr": 0.0001, "seed": 0}
    again = api.submit(same, **{"Idempotency-Key": "abc"})
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert api.queue.enqueued == [first.json()["id"]]
    other = api.submit({**body, "verify": True}, **{"Idempotency-Key": "abc"})
    assert_error(other, 409, "Idempotency-Key", "'abc'", "different request")
    assert api.count(Job) == 1
    # Keys are per owner; no key means a new job every time.
    bob_dataset = api.dataset(who="bob")
    bob = api.submit(api.job_body(bob_dataset["id"]), who="bob", **{"Idempotency-Key": "abc"})
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]
    assert api.submit(body).json()["id"] != first.json()["id"]
    too_long = api.submit(body, **{"Idempotency-Key": "k" * 256})
    assert_error(too_long, 422, "Idempotency-Key", "at most 255")


class BrokenQueue:
    def enqueue(self, job_id: str) -> None:
        raise ConnectionError("broker down")


def test_a_job_that_cannot_be_queued_is_marked_failed(api_factory: Callable[..., Api]) -> None:
    api = api_factory(queue=BrokenQueue())
    dataset = api.dataset()
    assert_error(api.submit(api.job_body(dataset["id"])), 503, None, "marked failed")
    (job,) = api.client.get("/jobs", headers=api.auth()).json()["data"]
    assert job["status"] == "failed" and "broker down" in job["error"]


# --------------------------------------------------------------------------------------------
# listing and cancelling


def test_list_jobs_cursor_through_25_jobs(api: Api) -> None:
    api.dataset()
    api.dataset(who="bob")
    jobs = [make_job(api, now=T0 + timedelta(seconds=i // 2)) for i in range(25)]  # ties too
    make_job(api, owner="bob")
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]
    seen: list[str] = []
    cursor = None
    pages = []
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/jobs", params=params, headers=api.auth()).json()
        pages.append(len(page["data"]))
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [10, 10, 5]
    assert seen == expected
    repository.mark_running(session=api.session, job_id=jobs[3].id)
    repository.mark_running(session=api.session, job_id=jobs[7].id)
    api.session.commit()
    running = api.client.get("/jobs", params={"status": "running"}, headers=api.auth()).json()
    assert [j["id"] for j in running["data"]] == [jobs[7].id, jobs[3].id]
    assert running["data"][0]["started_at"] is not None and running["data"][0]["attempts"] == 1
    bad = api.client.get("/jobs", params={"status": "done"}, headers=api.auth())
    assert_error(bad, 422, "status", "'queued'")
    bad = api.client.get("/jobs", params={"cursor": "x"}, headers=api.auth())
    assert_error(bad, 422, "cursor", "invalid cursor")


def test_cancel_transitions(api: Api) -> None:
    api.dataset()
    queued, running, done, failed = (make_job(api) for _ in range(4))
    response = api.client.post(f"/jobs/{queued.id}/cancel", headers=api.auth())
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]

    repository.mark_running(session=api.session, job_id=running.id)
    api.session.commit()
    response = api.client.post(f"/jobs/{running.id}/cancel", headers=api.auth())
    assert response.status_code == 200
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    assert repository.is_cancel_requested(session=api.session, job_id=running.id)

    repository.mark_running(session=api.session, job_id=done.id)
    repository.finish_job(session=api.session, job_id=done.id, status="succeeded")
    repository.finish_job(session=api.session, job_id=failed.id, status="failed", error="x")
    api.session.commit()
    for job, status in ((done, "succeeded"), (failed, "failed"), (queued, "cancelled")):
        response = api.client.post(f"/jobs/{job.id}/cancel", headers=api.auth())
        assert_error(response, 409, None, f"already {status}")


# --------------------------------------------------------------------------------------------
# recommendations


def test_recommendation_states(api: Api) -> None:
    api.dataset()
    job = make_job(api)
    url = f"/recommendations/{job.id}"
    assert_error(api.client.get(url, headers=api.auth()), 409, None, "is queued")

    repository.mark_running(session=api.session, job_id=job.id)
    repository.update_progress(session=api.session, job_id=job.id, stage="finetune", progress=0.42)
    api.session.commit()
    assert_error(
        api.client.get(url, headers=api.auth()), 409, None, "is running (stage finetune, 42%)"
    )

    body = sample_recommendation()
    repository.save_recommendation(session=api.session, job_id=job.id, body=body)
    repository.finish_job(session=api.session, job_id=job.id, status="succeeded")
    api.session.commit()
    response = api.client.get(url, headers=api.auth())
    assert response.status_code == 200
    assert response.json() == body
    assert Recommendation.model_validate(response.json())

    failed = make_job(api)
    repository.finish_job(session=api.session, job_id=failed.id, status="failed", error="OOM")
    api.session.commit()
    response = api.client.get(f"/recommendations/{failed.id}", headers=api.auth())
    assert_error(response, 409, None, "failed (OOM)")

    succeeded_without = make_job(api)
    repository.finish_job(session=api.session, job_id=succeeded_without.id, status="succeeded")
    api.session.commit()
    response = api.client.get(f"/recommendations/{succeeded_without.id}", headers=api.auth())
    assert_error(response, 404, None, "no recommendation is stored")

    for unknown in (MISSING, "nope"):
        response = api.client.get(f"/recommendations/{unknown}", headers=api.auth())
        assert_error(response, 404, None, f"no job with id '{unknown}'")


# --------------------------------------------------------------------------------------------
# owners


def test_owner_isolation_on_every_route(api: Api) -> None:
    dataset = api.dataset()
    job = api.submit(api.job_body(dataset["id"])).json()
    repository.save_recommendation(
        session=api.session, job_id=job["id"], body=sample_recommendation()
    )
    api.session.commit()
    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/datasets/{dataset['id']}", {}),
        ("DELETE", f"/datasets/{dataset['id']}", {}),
        ("GET", f"/jobs/{job['id']}", {}),
        ("POST", f"/jobs/{job['id']}/cancel", {}),
        ("GET", f"/recommendations/{job['id']}", {}),
    ]
    for method, url, kwargs in routes:
        response = api.client.request(method, url, headers=api.auth("bob"), **kwargs)
        assert_error(response, 404, None, "no ")
    listing = [
        ("GET", "/datasets", {}),
        ("GET", "/jobs", {}),
        ("POST", "/jobs", {"json": api.job_body(dataset["id"])}),
        ("POST", "/datasets", {"files": {"file": ("t.csv", csv_bytes())}}),
    ]
    assert api.client.get("/datasets", headers=api.auth("bob")).json()["data"] == []
    assert api.client.get("/jobs", headers=api.auth("bob")).json()["data"] == []
    response = api.submit(api.job_body(dataset["id"]), who="bob")
    assert_error(response, 422, "dataset_id", f"no dataset with id '{dataset['id']}'")

    bad_headers: list[tuple[dict[str, str], str]] = [
        ({}, "authentication required"),
        (api.auth("revoked"), "unknown or has been revoked"),
        ({"Authorization": "Bearer tg_not-a-real-key"}, "unknown or has been revoked"),
        ({"Authorization": "Bearer "}, "authentication required"),
        ({"Authorization": f"Basic {api.keys['alice']}"}, "authentication required"),
    ]
    for method, url, kwargs in routes + listing:
        for headers, fragment in bad_headers:
            response = api.client.request(method, url, headers=headers, **kwargs)
            error = assert_error(response, 401, None, fragment)
            assert response.headers["www-authenticate"] == "Bearer", (method, url, error)
    # Nothing changed for alice.
    assert api.client.get(f"/jobs/{job['id']}", headers=api.auth()).json()["status"] == "queued"
    assert api.client.get(f"/datasets/{dataset['id']}", headers=api.auth()).status_code == 200
    assert api.queue.enqueued == [job["id"]]
