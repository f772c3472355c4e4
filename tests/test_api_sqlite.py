"""The REST API on SQLite (embedded mode), and the API process staying free of torch.

The torch check runs in a fresh subprocess: this pytest process has torch loaded by other tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy.orm import Session

from tests.test_api import build_api, csv_bytes

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
