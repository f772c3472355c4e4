"""Embedded mode: the API with its LocalQueue (one spawned worker process) on SQLite.

The job runs in the worker process; the API process stays free of torch (checked in a fresh
subprocess, since this pytest process has torch loaded by other tests).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, make_sessionmaker, upgrade
from app.main import create_app
from app.queue import LocalQueue
from models.schema import Recommendation
from tests.worker_helpers import new_key, submit_job, tiny_settings, wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_job_runs_in_the_local_worker(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is ~30x faster
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    upgrade(url)
    settings = tiny_settings(tmp_path, tiny_bert, url)
    engine = make_engine(url)
    key = new_key(make_sessionmaker(engine))
    queue = LocalQueue(settings, poll_interval_s=1.0)
    with TestClient(create_app(settings, queue=queue)) as client:
        assert client.get("/readyz").json()["checks"]["broker"] == "ok"
        job_id = submit_job(client, key)
        job = wait_for(client, key, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert (job["status"], job["progress"], job["error"]) == ("succeeded", 1.0, None)
        rec = client.get(f"/recommendations/{job_id}", headers={"Authorization": f"Bearer {key}"})
        assert rec.status_code == 200, rec.text
        Recommendation.model_validate(rec.json())
        pid = queue.pid
    assert pid is not None
    assert queue.pid is None  # stopped with the app
    engine.dispose()


_SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    from fastapi.testclient import TestClient

    from app.db import upgrade
    from app.main import create_app
    from app.queue import LocalQueue
    from app.settings import Settings

    root = Path(sys.argv[1])
    url = f"sqlite:///{root / 'tg.db'}"
    upgrade(url)
    settings = Settings(_env_file=None, data_dir=root, database_url=url, models={})
    queue = LocalQueue(settings, poll_interval_s=0.5)
    with TestClient(create_app(settings, queue=queue)) as client:
        assert client.get("/readyz").status_code == 200
        time.sleep(3)  # the worker process has imported torch by now
        assert queue.pid is not None
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not loaded, loaded
    print("torch-free")
    """
)


def test_the_api_process_with_a_local_worker_never_imports_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch-free" in result.stdout
