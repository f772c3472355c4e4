"""The bad-input catalogue: distinct bad inputs tried against the live API (``taskgrouper
serve`` in a subprocess), each answered with a 4xx JSON error naming the field and the problem,
with the database rows and the files under the data directory counted before and after.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.live_server import LiveServer, create_key, embedded_server

pytestmark = pytest.mark.slow

MISSING = "00000000-0000-4000-8000-000000000000"


def table(rows: int = 40, **extra: list[Any]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "text": [
                f"ticket number {i} about {'login' if i % 2 else 'billing'}" for i in range(rows)
            ],
            "product": ["login" if i % 2 else "billing" for i in range(rows)],
            "urgent": ["yes" if i % 3 == 0 else "no" for i in range(rows)],
            "topic": ["a", "b", "c", "d"] * (rows // 4),
        }
    )
    for name, values in extra.items():
        frame[name] = values
    return frame


def csv(frame: pd.DataFrame, **kw: Any) -> bytes:
    return frame.to_csv(index=False, **kw).encode("utf-8")


@dataclass
class Ctx:
    live: LiveServer
    dataset_id: str
    others_dataset_id: str
    job_id: str

    def upload(self, name: str, data: bytes, content_type: str | None = None) -> httpx.Response:
        file = (name, data) if content_type is None else (name, data, content_type)
        return self.live.client.post("/datasets", files={"file": file}, headers=self.live.auth)

    def job(self, **overrides: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "dataset_id": self.dataset_id,
            "text_column": "text",
            "tasks": ["product", "urgent"],
            "model": "tiny",
            "training": {"epochs": 1},
        }
        body.update(overrides)
        body = {k: v for k, v in body.items() if v is not DROP}
        return self.live.client.post("/jobs", json=body, headers=self.live.auth)

    def raw(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {**self.live.auth, **kw.pop("headers", {})}
        return self.live.client.request(method, url, headers=headers, **kw)


DROP = object()


@dataclass(frozen=True)
class Bad:
    name: str
    send: Callable[[Ctx], httpx.Response]
    status: int
    field: str | None
    fragment: str


def training(**values: Any) -> dict[str, Any]:
    return {"epochs": 1, **values}


CATALOGUE: list[Bad] = [
    # uploads
    Bad(
        "malformed CSV (unclosed quote)",
        lambda c: c.upload("t.csv", b'text,label\n"never closed,a\nb,c\n' * 3),
        422,
        "file",
        "",
    ),
    Bad(
        "wrong delimiter (semicolons)",
        lambda c: c.upload("t.csv", csv(table(), sep=";")),
        422,
        "file",
        "delimiter",
    ),
    Bad(
        "non-UTF-8 bytes",
        lambda c: c.upload("t.csv", "text,label\ncaf\xe9,a\n".encode("latin-1") * 5),
        422,
        "file",
        "UTF-8",
    ),
    Bad(
        "UTF-16 with a byte-order mark",
        lambda c: c.upload("t.csv", csv(table()).decode().encode("utf-16")),
        422,
        "file",
        "UTF-8",
    ),
    Bad("empty file", lambda c: c.upload("t.csv", b""), 422, "file", "empty"),
    Bad(
        "header only",
        lambda c: c.upload("t.csv", b"text,product,urgent\n"),
        422,
        "file",
        "no data rows",
    ),
    Bad(
        "duplicate column names",
        lambda c: c.upload("t.csv", b"text,label,label\na,b,c\nd,e,f\n"),
        422,
        "file",
        "label",
    ),
    Bad(
        "Parquet file that is not Parquet",
        lambda c: c.upload("t.parquet", b"PAR1 this is not parquet at all"),
        422,
        "file",
        "Parquet",
    ),
    Bad(
        "JSONL with a broken line",
        lambda c: c.upload("t.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", label\n'),
        422,
        "file",
        "line",
    ),
    Bad(
        "unsupported file type",
        lambda c: c.upload("t.xlsx", b"PK\x03\x04 zip"),
        415,
        "file",
        "supported extensions are .csv, .jsonl",
    ),
    Bad(
        "upload over the size limit",
        lambda c: c.upload("t.csv", b"text,label\n" + b"x" * (2 * 1024 * 1024) + b",a\n"),
        413,
        "file",
        "limit",
    ),
    Bad(
        "upload without a file field",
        lambda c: c.raw("POST", "/datasets", files={"other": ("t.csv", b"a,b\n1,2\n")}),
        422,
        "file",
        "",
    ),
    # job bodies
    Bad("missing text column", lambda c: c.job(text_column="body"), 422, "text_column", "body"),
    Bad("empty texts", lambda c: c.job(text_column="blank"), 422, "text_column", "empty"),
    Bad(
        "label column with one class",
        lambda c: c.job(tasks=["product", "constant"]),
        422,
        "tasks[1]",
        "only 1 class",
    ),
    Bad(
        "label column with thousands of classes",
        lambda c: c.job(tasks=["product", "row_id"]),
        422,
        "tasks[1]",
        "classes",
    ),
    Bad(
        "task not in the dataset",
        lambda c: c.job(tasks=["product", "nope"]),
        422,
        "tasks[1]",
        "nope",
    ),
    Bad(
        "duplicate tasks",
        lambda c: c.job(tasks=["product", "product"]),
        422,
        "tasks[1]",
        "already used by tasks[0]",
    ),
    Bad("a single task", lambda c: c.job(tasks=["product"]), 422, "tasks", "2"),
    Bad(
        "candidate naming an unknown task",
        lambda c: c.job(candidate_task_sets=[[["product", "ghost"], ["urgent"]]]),
        422,
        "candidate_task_sets[0]",
        "unknown task 'ghost'",
    ),
    Bad(
        "candidate putting a task in two groups",
        lambda c: c.job(candidate_task_sets=[[["product", "urgent"], ["urgent"]]]),
        422,
        "candidate_task_sets[0]",
        "'urgent' appears more than once",
    ),
    Bad("learning rate zero", lambda c: c.job(training=training(lr=0)), 422, "training.lr", ""),
    Bad("epochs zero", lambda c: c.job(training=training(epochs=0)), 422, "training.epochs", ""),
    Bad(
        "batch size too large",
        lambda c: c.job(training=training(batch_size=100_000)),
        422,
        "training.batch_size",
        "",
    ),
    Bad(
        "max_length over the model's limit",
        lambda c: c.job(training=training(max_length=10_000)),
        422,
        "training.max_length",
        "",
    ),
    Bad(
        "step fraction above 1",
        lambda c: c.job(training=training(step_fraction=1.5)),
        422,
        "training.step_fraction",
        "",
    ),
    Bad(
        "probe size larger than the data",
        lambda c: c.job(training=training(probe_size=5000)),
        422,
        "training.probe_size",
        "distinct training texts",
    ),
    Bad("unknown model name", lambda c: c.job(model="bert-huge"), 422, "model", "bert-huge"),
    Bad(
        "model given as a server path",
        lambda c: c.job(model="/etc/passwd"),
        422,
        "model",
        "registered",
    ),
    Bad("unknown field", lambda c: c.job(epochs=3), 422, "epochs", ""),
    Bad(
        "another owner's dataset",
        lambda c: c.job(dataset_id=c.others_dataset_id),
        422,
        "dataset_id",
        "no dataset",
    ),
    Bad(
        "dataset id that is not an id",
        lambda c: c.job(dataset_id="../../etc"),
        422,
        "dataset_id",
        "",
    ),
    Bad("max_groups zero", lambda c: c.job(max_groups=0), 422, "max_groups", ""),
    Bad(
        "JSON body over the limit",
        lambda c: c.raw(
            "POST",
            "/jobs",
            content=b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}',
            headers={"Content-Type": "application/json"},
        ),
        413,
        "body",
        "limit",
    ),
    Bad(
        "body that is not JSON",
        lambda c: c.raw(
            "POST", "/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        422,
        "body",
        "JSON",
    ),
    Bad(
        "wrong content type",
        lambda c: c.raw(
            "POST",
            "/jobs",
            content=b"dataset_id=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        422,
        "body",
        "",
    ),
    # ids and query parameters
    Bad(
        "job id that does not exist", lambda c: c.raw("GET", f"/jobs/{MISSING}"), 404, None, MISSING
    ),
    Bad("job id that is not an id", lambda c: c.raw("GET", "/jobs/42;drop"), 404, None, "UUID"),
    Bad(
        "dataset id that does not exist",
        lambda c: c.raw("GET", f"/datasets/{MISSING}"),
        404,
        None,
        MISSING,
    ),
    Bad(
        "cancel a job that does not exist",
        lambda c: c.raw("POST", f"/jobs/{MISSING}/cancel"),
        404,
        None,
        MISSING,
    ),
    Bad(
        "recommendation id that is not an id",
        lambda c: c.raw("GET", "/recommendations/not-an-id"),
        404,
        None,
        "UUID",
    ),
    Bad("page size zero", lambda c: c.raw("GET", "/jobs", params={"limit": 0}), 422, "limit", ""),
    Bad(
        "malformed cursor",
        lambda c: c.raw("GET", "/jobs", params={"cursor": "%%%"}),
        422,
        "cursor",
        "",
    ),
    Bad(
        "unknown status filter",
        lambda c: c.raw("GET", "/jobs", params={"status": "done"}),
        422,
        "status",
        "",
    ),
    Bad(
        "idempotency key reused with another body",
        lambda c: c.raw(
            "POST",
            "/jobs",
            json={
                "dataset_id": c.dataset_id,
                "text_column": "text",
                "tasks": ["product", "topic"],
                "model": "tiny",
            },
            headers={"Idempotency-Key": "catalogue-key"},
        ),
        409,
        "Idempotency-Key",
        "different request",
    ),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Iterator[Ctx]:
    root = tmp_path_factory.mktemp("bad")
    limits = {"max_upload_bytes": str(1024 * 1024), "max_body_bytes": str(256 * 1024)}
    with embedded_server(root, tiny_bert, **limits) as live:
        frame = table(
            200,
            blank=[""] * 200,
            constant=["same"] * 200,
            row_id=[f"id-{i}" for i in range(200)],
        )
        up = live.client.post("/datasets", files={"file": ("t.csv", csv(frame))}, headers=live.auth)
        assert up.status_code == 201, up.text
        other = create_key(live, "mallory")
        theirs = live.client.post(
            "/datasets",
            files={"file": ("m.csv", csv(table()))},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert theirs.status_code == 201, theirs.text
        # The idempotency key, first used with a valid body (on a job later cancelled).
        first = live.client.post(
            "/jobs",
            json={
                "dataset_id": up.json()["id"],
                "text_column": "text",
                "tasks": ["product", "urgent"],
                "model": "tiny",
                "training": {"epochs": 1},
            },
            headers={**live.auth, "Idempotency-Key": "catalogue-key"},
        )
        assert first.status_code == 202, first.text
        live.client.post(f"/jobs/{first.json()['id']}/cancel", headers=live.auth)
        yield Ctx(live, up.json()["id"], theirs.json()["id"], first.json()["id"])


def snapshot(root: Path) -> tuple[dict[str, int], list[str]]:
    data = root / "data"
    db = next(data.glob("*.db"))
    with sqlite3.connect(db) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("datasets", "jobs", "job_datasets", "recommendations", "api_keys")
        }
    files = sorted(
        str(p.relative_to(data))
        for p in data.rglob("*")
        if p.is_file() and not p.name.startswith(db.name)
    )
    return counts, files


def test_the_catalogue_is_large_and_distinct() -> None:
    assert len(CATALOGUE) >= 30
    assert len({b.name for b in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("bad", CATALOGUE, ids=[b.name for b in CATALOGUE])
def test_bad_input_is_refused_and_changes_nothing(ctx: Ctx, bad: Bad) -> None:
    before = snapshot(ctx.live.root)
    response = bad.send(ctx)
    after = snapshot(ctx.live.root)
    assert response.status_code == bad.status, (bad.name, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), bad.name
    error = response.json()["error"]
    assert error["status"] == bad.status
    assert error["field"] == bad.field, (bad.name, error)
    if bad.field:
        assert error["message"].startswith(bad.field), error
    assert bad.fragment.lower() in error["message"].lower(), (bad.name, error["message"])
    assert before == after, bad.name


def test_a_utf8_byte_order_mark_is_not_part_of_the_header(ctx: Ctx) -> None:
    data = b"\xef\xbb\xbf" + csv(table())
    response = ctx.upload("bom.csv", data)
    assert response.status_code == 201, response.text
    assert response.json()["columns"][0] == "text"
    ctx.live.client.delete(f"/datasets/{response.json()['id']}", headers=ctx.live.auth)
