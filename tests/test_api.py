"""The REST API (app/main.py, app/routes): datasets, errors, limits, health, OpenAPI, torch-free.

Every test runs the app with ``TestClient`` against PostgreSQL inside the rolled-back ``session``
fixture (the app's session dependency is overridden with it). The fixtures and helpers here are
shared with ``tests/test_api_jobs.py`` and ``tests/test_api_sqlite.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import repository
from app.deps import get_session
from app.main import create_app
from app.queue import NullQueue
from app.settings import Settings
from app.tables import Dataset, Job, JobDataset

pytestmark = pytest.mark.postgres

TOPICS = ["billing", "search", "login", "export"]


# --------------------------------------------------------------------------------------------
# data


def ticket_records(n: int = 40) -> list[dict[str, Any]]:
    """Texts with labels: sentiment (2 classes), topic (4), urgent (2), constant (1 class),
    rare (one class of 2 rows, set aside), ident (all distinct, not a label column)."""
    return [
        {
            "text": f"ticket {i}: the {TOPICS[i % 4]} page feels {'good' if i % 2 else 'bad'}",
            "sentiment": "neg" if i % 2 else "pos",
            "topic": TOPICS[i % 4],
            "urgent": "yes" if i % 3 == 0 else "no",
            "constant": "same",
            "rare": "b" if i < 2 else "a",
            "ident": f"id-{i}",
        }
        for i in range(n)
    ]


def csv_bytes(n: int = 40) -> bytes:
    return pd.DataFrame(ticket_records(n)).to_csv(index=False).encode()


def jsonl_bytes(n: int = 40) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in ticket_records(n)).encode()


def parquet_bytes(n: int = 40) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(ticket_records(n)).to_parquet(buffer, index=False)
    return buffer.getvalue()


def fake_model_dir(root: Path) -> Path:
    """What resolve_model checks: config.json and a .safetensors file (never loaded here)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"")
    return root


def make_settings(tmp_path: Path, **limits: Any) -> Settings:
    models = {"minilm-l6": str(fake_model_dir(tmp_path / "model")), "tiny": str(tmp_path / "model")}
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", models=models)  # type: ignore[call-arg]
    return settings.model_copy(update=limits)


# --------------------------------------------------------------------------------------------
# the app under test


@dataclass
class Api:
    """A TestClient on an app bound to one session, with keys for two owners."""

    app: FastAPI
    client: TestClient
    session: Session
    queue: NullQueue
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def upload(
        self, data: bytes | None = None, filename: str = "tickets.csv", who: str = "alice"
    ) -> Any:
        files = {"file": (filename, csv_bytes() if data is None else data)}
        return self.client.post("/datasets", files=files, headers=self.auth(who))

    def dataset(self, who: str = "alice", **kw: Any) -> dict[str, Any]:
        response = self.upload(who=who, **kw)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def job_body(self, dataset_id: str, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dataset_id": dataset_id,
            "text_column": "text",
            "tasks": ["sentiment", "topic", "urgent"],
            "training": {"epochs": 1, "probe_size": 16},
        }
        body.update(overrides)
        return body

    def submit(self, body: dict[str, Any], who: str = "alice", **headers: str) -> Any:
        return self.client.post("/jobs", json=body, headers={**self.auth(who), **headers})

    def count(self, table: type[Any]) -> int:
        return int(self.session.scalar(select(func.count()).select_from(table)) or 0)

    def counts(self) -> tuple[int, int, int]:
        return self.count(Dataset), self.count(Job), self.count(JobDataset)


def build_api(session: Session, tmp_path: Path, queue: Any = None, **limits: Any) -> Api:
    # The routes' sessions are the test's one rolled-back session (get_session is overridden);
    # the fast lane opens sessions of its own, so it is off here (tests/test_fastlane.py).
    settings = make_settings(tmp_path, **{"fast_reads": False, **limits})
    queue = NullQueue() if queue is None else queue
    app = create_app(settings, queue=queue, session_factory=lambda: session)

    def _session() -> Iterator[Session]:
        yield session

    app.dependency_overrides[get_session] = _session
    api = Api(app, TestClient(app), session, queue, settings)
    for owner in ("alice", "bob"):
        _, api.keys[owner] = repository.create_api_key(session=session, name=owner)
    _, api.keys["revoked"] = repository.create_api_key(
        session=session, name="alice-old", owner="alice"
    )
    repository.revoke_api_key(session=session, name_or_prefix="alice-old")
    session.commit()
    return api


@pytest.fixture
def api_factory(session: Session, tmp_path: Path) -> Callable[..., Api]:
    """Build an Api with other limits or another queue: ``api_factory(max_body_bytes=100)``."""
    return lambda queue=None, **limits: build_api(session, tmp_path, queue, **limits)


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()


def assert_error(response: Any, status: int, field: str | None, *fragments: str) -> dict[str, Any]:
    """The response is an error in the API's shape, naming ``field`` and each fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"status", "field", "message"}, error
    assert error["status"] == status
    assert error["field"] == field, error
    if field is not None:
        assert error["message"].startswith(field), error
    for fragment in fragments:
        assert fragment in error["message"], error
    return dict(error)


def stored_files(api: Api) -> list[Path]:
    root = api.settings.artifacts
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------------------------
# uploads


def test_upload_csv_answers_columns_and_label_columns(api: Api) -> None:
    response = api.upload()
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/datasets/{body['id']}"
    assert body["filename"] == "tickets.csv"
    assert body["format"] == "csv"
    assert body["row_count"] == 40
    assert body["columns"] == ["text", "sentiment", "topic", "urgent", "constant", "rare", "ident"]
    assert body["size_bytes"] == len(csv_bytes())
    assert body["sha256"] == hashlib.sha256(csv_bytes()).hexdigest()
    labels = body["label_columns"]
    assert labels["sentiment"] == {"neg": 20, "pos": 20}
    assert labels["topic"] == {t: 10 for t in sorted(TOPICS)}
    assert labels["rare"] == {"a": 38, "b": 2}
    assert "text" not in labels and "ident" not in labels and "constant" not in labels
    assert body["missing_labels"] == {column: 0 for column in labels}
    row = api.session.get(Dataset, body["id"])
    assert row is not None and row.owner == "alice"
    assert Path(row.artifact_path).read_bytes() == csv_bytes()
    assert stored_files(api) == [Path(row.artifact_path)]


def test_upload_counts_the_rows_each_label_column_leaves_out(api: Api) -> None:
    """NA, None and empty cells are missing labels; the answer says how many, per column."""
    rows = ["text,answer,topic"] + [
        f"t{i},{['yes', 'no', 'NA', 'None', ''][i % 5]},{'ab'[i % 2]}" for i in range(20)
    ]
    response = api.upload(("\n".join(rows) + "\n").encode(), "answers.csv")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["label_columns"]["answer"] == {"no": 4, "yes": 4}
    assert body["missing_labels"] == {"answer": 12, "topic": 0}
    listed = api.client.get("/datasets", headers=api.auth()).json()["data"]
    assert listed[0]["missing_labels"] == body["missing_labels"]


@pytest.mark.parametrize(
    ("filename", "data", "fmt"),
    [
        ("tickets.jsonl", jsonl_bytes(), "jsonl"),
        ("tickets.ndjson", jsonl_bytes(), "jsonl"),
        ("tickets.parquet", parquet_bytes(), "parquet"),
    ],
)
def test_upload_jsonl_and_parquet(api: Api, filename: str, data: bytes, fmt: str) -> None:
    csv_body = api.dataset()
    response = api.upload(data, filename)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == fmt and body["filename"] == filename
    assert body["row_count"] == 40
    assert body["columns"] == csv_body["columns"]
    assert body["label_columns"] == csv_body["label_columns"]


@pytest.mark.parametrize(
    ("filename", "data", "status", "fragments"),
    [
        ("tickets.txt", b"text,label\na,b\n", 415, ["'.txt'", ".csv"]),
        ("tickets", b"text,label\na,b\n", 415, ["no file extension"]),
        ("bad.csv", b"text,label\nh\xe9llo,a\n", 422, ["not valid UTF-8", "line 2"]),
        ("dupes.csv", b"text,label,label\na,b,c\n", 422, ["'label'", "appears 2 times"]),
        ("empty.csv", b"", 422, ["empty"]),
        ("empty.jsonl", b"\n\n", 422, ["empty"]),
        ("header.csv", b"text,label\n", 422, ["no data rows"]),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', 422, ["line 2", "not valid JSON"]),
        ("bad.parquet", b"not parquet at all", 422, ["Parquet"]),
        ("numbers.jsonl", b'{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n', 422, ["no text column"]),
        ("blank.csv", b"text,label\nhello,\n  ,b\n", 422, ["no text column", "empty text"]),
        ("key.jsonl", b'{"text": "a", "": "b"}\n', 422, ["column 2 has a blank name"]),
        ("long.csv", b"text," + b"x" * 1001 + b"\na,b\n", 422, ["1001 characters", "1000"]),
    ],
)
def test_upload_errors(
    api: Api, filename: str, data: bytes, status: int, fragments: list[str]
) -> None:
    before = api.counts()
    assert_error(api.upload(data, filename), status, "file", *fragments)
    assert api.counts() == before
    assert stored_files(api) == []


def test_upload_over_the_size_limit_is_413(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_upload_bytes=1000)
    big = csv_bytes(200)
    assert len(big) > 1000
    assert_error(api.upload(big), 413, "file", "larger than the limit of 1000 bytes")
    # Far over the limit: refused by its Content-Length before the body is read.
    huge = b"text,label\n" + b"x" * 200_000 + b",a\n"
    assert_error(api.upload(huge), 413, "file", "larger than the limit")
    assert api.counts()[0] == 0 and stored_files(api) == []
    assert api.upload(csv_bytes(8)).status_code == 201


def test_upload_over_the_row_limit_is_422(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_rows_per_dataset=10)
    assert_error(api.upload(csv_bytes(11)), 422, "file", "more than 10 data rows")
    assert api.upload(csv_bytes(10)).status_code == 201


def test_upload_without_a_file_field(api: Api) -> None:
    response = api.client.post(
        "/datasets", data={"other": "x"}, files={"x": ("a.csv", b"a")}, headers=api.auth()
    )
    assert_error(response, 422, "file", "Field required")


def test_a_failed_commit_leaves_no_file(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_commit() -> None:
        raise OperationalError("COMMIT", {}, Exception("connection lost"))

    monkeypatch.setattr(api.session, "commit", broken_commit)
    client = TestClient(api.app, raise_server_exceptions=False)
    files = {"file": ("tickets.csv", csv_bytes())}
    response = client.post("/datasets", files=files, headers=api.auth())
    assert_error(response, 503, None, "database is not reachable")  # a lost connection
    assert stored_files(api) == []


# --------------------------------------------------------------------------------------------
# listing, reading, deleting


def test_list_datasets_pages_with_a_cursor(api: Api) -> None:
    ids = [api.dataset()["id"] for _ in range(3)]
    api.dataset(who="bob")
    first = api.client.get("/datasets", params={"limit": 2}, headers=api.auth()).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["next_cursor"]
    second = api.client.get(
        "/datasets", params={"limit": 2, "cursor": first["next_cursor"]}, headers=api.auth()
    ).json()
    assert [d["id"] for d in second["data"]] == [ids[0]]
    assert second["next_cursor"] is None
    default = api.client.get("/datasets", headers=api.auth()).json()
    assert len(default["data"]) == 3


_FORGED_CURSOR = (
    base64.urlsafe_b64encode(
        json.dumps(["0001-01-01T00:00:00+14:00", "3f2b8c1e-9a4d-4e57-8c0b-2d6f1a7e9b10"]).encode()
    )
    .decode()
    .rstrip("=")
)


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 101}, "limit", "less than or equal to 100"),
        ({"limit": "many"}, "limit", "valid integer"),
        ({"cursor": "not-a-cursor"}, "cursor", "invalid cursor"),
        # A well-formed cursor whose time, moved to UTC, falls before year 1.
        ({"cursor": _FORGED_CURSOR}, "cursor", "invalid cursor"),
    ],
)
def test_list_datasets_bad_parameters(
    api: Api, params: dict[str, Any], field: str, fragment: str
) -> None:
    response = api.client.get("/datasets", params=params, headers=api.auth())
    assert_error(response, 422, field, fragment)


def test_get_dataset_and_unknown_ids(api: Api) -> None:
    dataset = api.dataset()
    got = api.client.get(f"/datasets/{dataset['id']}", headers=api.auth())
    assert got.status_code == 200 and got.json() == dataset
    upper = api.client.get(f"/datasets/{dataset['id'].upper()}", headers=api.auth())
    assert upper.status_code == 200
    missing = "00000000-0000-4000-8000-000000000000"
    assert_error(api.client.get(f"/datasets/{missing}", headers=api.auth()), 404, None, missing)
    assert_error(
        api.client.get("/datasets/not-a-uuid", headers=api.auth()), 404, None, "'not-a-uuid'"
    )


def test_delete_dataset_removes_row_and_file(api: Api) -> None:
    dataset = api.dataset()
    path = Path(api.session.get(Dataset, dataset["id"]).artifact_path)  # type: ignore[union-attr]
    response = api.client.delete(f"/datasets/{dataset['id']}", headers=api.auth())
    assert response.status_code == 204 and response.content == b""
    assert not path.exists()
    assert_error(api.client.get(f"/datasets/{dataset['id']}", headers=api.auth()), 404, None)
    assert_error(api.client.delete(f"/datasets/{dataset['id']}", headers=api.auth()), 404, None)


def test_delete_dataset_in_use_is_409(api: Api) -> None:
    dataset = api.dataset()
    path = Path(api.session.get(Dataset, dataset["id"]).artifact_path)  # type: ignore[union-attr]
    job = api.submit(api.job_body(dataset["id"])).json()
    response = api.client.delete(f"/datasets/{dataset['id']}", headers=api.auth())
    assert_error(response, 409, None, "in use by a queued or running job")
    assert path.exists()
    assert api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth()).status_code == 200
    assert api.client.delete(f"/datasets/{dataset['id']}", headers=api.auth()).status_code == 204
    # The finished job keeps its history.
    kept = api.client.get(f"/jobs/{job['id']}", headers=api.auth()).json()
    assert kept["dataset_ids"] == [dataset["id"]] and kept["status"] == "cancelled"


# --------------------------------------------------------------------------------------------
# error shape, body limits


def test_validation_errors_name_the_field(api: Api) -> None:
    dataset = api.dataset()
    response = api.submit(api.job_body(dataset["id"], training={"lr": 0}))
    error = assert_error(response, 422, "training.lr")
    assert error["message"] == "training.lr: Input should be greater than 0"
    response = api.client.post(
        "/jobs",
        content=b"{not json",
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert_error(response, 422, "body", "not valid JSON")
    response = api.client.post("/jobs", headers=api.auth())
    assert_error(response, 422, "body", "request body is required")


def test_unknown_paths_and_methods_use_the_error_shape(api: Api) -> None:
    assert_error(api.client.get("/nowhere"), 404, None, "/nowhere")
    assert_error(api.client.put("/datasets", headers=api.auth()), 405, None, "PUT")


def test_json_body_over_the_limit_is_413(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_body_bytes=2048)
    api.dataset()  # uploads have their own, larger limit
    body = api.job_body("d" * 90, text_column="t" * 900)
    body["tasks"] = ["x" * 500, "y" * 500, "z" * 500]
    response = api.submit(body)
    assert_error(response, 413, "body", "larger than the limit of 2048 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b" " * 500

    response = api.client.post(
        "/jobs", content=chunks(), headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "body", "larger than the limit")
    assert api.counts()[1] == 0 and api.queue.enqueued == []


# --------------------------------------------------------------------------------------------
# health


class FailingQueue(NullQueue):
    def ping(self) -> None:
        raise ConnectionError("broker at redis://127.0.0.1:1 refused the connection")


def test_healthz_and_readyz(api: Api, api_factory: Callable[..., Api]) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}

    failing = api_factory(queue=FailingQueue())
    assert_error(failing.client.get("/readyz"), 503, "broker", "broker: not reachable", "refused")


def test_readyz_names_an_unreachable_database(api: Api) -> None:
    class DeadSession:
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    def dead() -> Iterator[Any]:
        yield DeadSession()

    api.app.dependency_overrides[get_session] = dead
    assert_error(api.client.get("/readyz"), 503, "database", "database: not reachable")
    assert api.client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------------------------
# OpenAPI


def test_openapi_documents_every_field_and_route(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    assert spec["info"]["title"] == "taskgrouper"
    assert "Authorization: Bearer" in spec["info"]["description"]
    schemas = spec["components"]["schemas"]
    for name in (
        "JobCreate",
        "TrainingSettings",
        "TaskRef",
        "JobPublic",
        "JobLinks",
        "DatasetPublic",
        "DatasetsPublic",
        "JobsPublic",
        "ErrorBody",
        "ErrorResponse",
    ):
        for prop, schema in schemas[name]["properties"].items():
            assert schema.get("description"), f"{name}.{prop} has no description"
            assert "examples" in schema or "example" in schema, f"{name}.{prop} has no example"
    assert "HTTPValidationError" not in schemas  # every 422 documents the API's own shape
    assert "ApiKey" in spec["components"]["securitySchemes"]
    tags = set()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary") and op.get("description"), where
            tags.update(op["tags"])
            for code, answer in op["responses"].items():
                assert answer.get("description"), f"{where} {code}"
                if code.startswith(("4", "5")):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), f"{where} {code}"
            if not path.startswith(("/healthz", "/readyz")):
                assert op.get("security"), f"{where} needs the API key"
                assert "401" in op["responses"], where
    assert tags == {"datasets", "jobs", "recommendations", "health"}
    assert api.client.get("/docs").status_code == 200
