"""The REST API on SQLite (embedded mode), and the API process staying free of torch.

The torch check runs in a fresh subprocess: this pytest process has torch loaded by other tests.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from app import repository
from app.db import for_writes, make_engine, make_sessionmaker, upgrade
from app.main import create_app
from app.queue import NullQueue
from tests.test_api import build_api, csv_bytes, make_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_upload_and_submit_on_sqlite(sqlite_session: Session, tmp_path: Path) -> None:
    api = build_api(sqlite_session, tmp_path)
    dataset = api.dataset()
    response = api.submit(api.job_body(dataset["id"]), **{"Idempotency-Key": "k1"})
    assert response.status_code == 202, response.text
    again = api.submit(api.job_body(dataset["id"]), **{"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == response.json()["id"]
    assert api.queue.enqueued == [response.json()["id"]]
    listed = api.client.get("/jobs", headers=api.auth()).json()
    assert [j["id"] for j in listed["data"]] == [response.json()["id"]]
    cancelled = api.client.post(f"/jobs/{response.json()['id']}/cancel", headers=api.auth())
    assert cancelled.json()["status"] == "cancelled"


_TORCH_FREE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from fastapi.testclient import TestClient

    from app import repository
    from app.db import make_engine, make_sessionmaker, upgrade
    from app.main import create_app
    from app.queue import NullQueue
    from app.settings import Settings

    root = Path(sys.argv[1])
    url = f"sqlite:///{root / 'tg.db'}"
    upgrade(url)
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    settings = Settings(
        _env_file=None, data_dir=root, database_url=url, models={"minilm-l6": str(model)}
    )
    maker = make_sessionmaker(make_engine(url))
    with maker() as session:
        _, key = repository.create_api_key(session=session, name="alice")
        session.commit()
    client = TestClient(create_app(settings, queue=NullQueue()))
    auth = {"Authorization": f"Bearer {key}"}

    def ok(response, *codes):
        assert response.status_code in codes, response.text
        return response

    csv = (root / "data.csv").read_bytes()
    dataset = ok(client.post("/datasets", files={"file": ("t.csv", csv)}, headers=auth), 201)
    dataset_id = dataset.json()["id"]
    body = {"dataset_id": dataset_id, "text_column": "text", "tasks": ["sentiment", "topic"]}
    job = ok(client.post("/jobs", json=body, headers=auth), 202).json()
    ok(client.post("/jobs", json={**body, "model": "bert"}, headers=auth), 422)
    ok(client.get("/datasets", headers=auth), 200)
    ok(client.get(f"/datasets/{dataset_id}", headers=auth), 200)
    ok(client.get("/jobs", headers=auth), 200)
    ok(client.get(f"/jobs/{job['id']}", headers=auth), 200)
    ok(client.get(f"/recommendations/{job['id']}", headers=auth), 409)
    ok(client.post(f"/jobs/{job['id']}/cancel", headers=auth), 200)
    ok(client.delete(f"/datasets/{dataset_id}", headers=auth), 204)
    ok(client.get("/healthz"), 200)
    ok(client.get("/readyz"), 200)
    ok(client.get("/openapi.json"), 200)
    ok(client.get("/docs"), 200)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    assert not heavy, heavy
    print("TORCH-FREE OK")
    """
)


def test_the_api_process_never_imports_torch(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_bytes(csv_bytes())
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE_SCRIPT, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TORCH-FREE OK" in result.stdout


def _embedded_app(tmp_path: Path, **limits: Any) -> tuple[TestClient, dict[str, str], Engine]:
    """An app on its own SQLite file, each request with a session of its own (as served)."""
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    upgrade(url)
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    with maker() as session:
        _, key = repository.create_api_key(session=session, name="alice")
        session.commit()
    settings = make_settings(tmp_path, api_key_cache_ttl_s=3600.0, **limits)
    app = create_app(settings, queue=NullQueue(), session_factory=maker)
    return TestClient(app), {"Authorization": f"Bearer {key}"}, engine


@pytest.mark.parametrize("limit", [4, 100])
def test_concurrent_submissions_on_sqlite_queue_for_the_write_lock(
    tmp_path: Path, limit: int
) -> None:
    # A submission reads (quota, idempotency key, datasets) and then inserts. In a deferred
    # SQLite transaction, another request's commit in between made the insert fail at once with
    # "database is locked" (a 503 to 40 of 48 such requests here); write requests now begin
    # IMMEDIATE and wait for the lock instead, and the per-owner quota holds exactly.
    client, auth, engine = _embedded_app(tmp_path, max_active_jobs_per_owner=limit)
    codes: list[int] = []
    with client:
        upload = client.post("/datasets", files={"file": ("t.csv", csv_bytes())}, headers=auth)
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]

        def submit(worker: int) -> None:
            for k in range(5):
                body = {
                    "dataset_id": dataset_id,
                    "text_column": "text",
                    "tasks": ["sentiment", "topic"],
                    "training": {"epochs": 1, "probe_size": 16, "seed": 10 * worker + k},
                }
                codes.append(client.post("/jobs", json=body, headers=auth).status_code)
                more = client.post(
                    "/datasets", files={"file": ("t.csv", csv_bytes())}, headers=auth
                )
                codes.append(more.status_code)

        threads = [threading.Thread(target=submit, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    engine.dispose()
    accepted = min(limit, 40)
    assert sorted(collections.Counter(codes).items()) == sorted(
        {201: 40, 202: accepted, **({429: 40 - accepted} if accepted < 40 else {})}.items()
    )


def test_only_write_transactions_begin_immediate_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tg.db'}")
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    event.listen(  # the driver's own BEGIN is sent outside the cursor hooks
        engine, "begin", lambda conn: seen.append("begin")
    )
    with make_sessionmaker(engine)() as session:
        session.execute(text("SELECT 1"))
    with make_sessionmaker(engine, writes=True)() as session:
        session.execute(text("SELECT 1"))
    with for_writes(engine).connect() as conn, conn.begin():
        conn.execute(text("SELECT 1"))
    engine.dispose()
    begins = [s for s in seen if s.startswith("BEGIN")]
    assert begins == ["BEGIN", "BEGIN IMMEDIATE", "BEGIN IMMEDIATE"]


def test_for_writes_leaves_other_databases_alone() -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert for_writes(engine) is engine
    engine.dispose()
