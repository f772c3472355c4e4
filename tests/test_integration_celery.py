"""Production mode end to end: the real API with a CeleryQueue, Redis, PostgreSQL and TWO real
Celery worker processes (``--pool=solo``).

A job's fine-tunes fan out over both workers and the analysis runs once; a running job is
cancelled through the API. When Redis or PostgreSQL is unreachable the test is skipped, or
fails under ``CI`` (CI must not go green by skipping it; tests/celery_fixtures.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import repository
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.queue import CeleryQueue
from models.schema import Recommendation
from tests.celery_fixtures import TERMINAL, start_worker, stop_workers, wait_ready
from tests.worker_helpers import TASKS, new_key, submit_job, tiny_settings, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_two_celery_workers_run_a_job_and_cancel_another(
    broker: str, worker_db: str, tiny_bert: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(tmp_path, tiny_bert, worker_db, broker_url=broker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGROUPER_")}
    env.update(
        TASKGROUPER_BROKER_URL=broker,
        TASKGROUPER_DATABASE_URL=worker_db,
        TASKGROUPER_DATA_DIR=str(settings.data_dir),
        TASKGROUPER_MODELS=json.dumps(settings.models),
        TASKGROUPER_DEVICE="cpu",
        TASKGROUPER_TAU_REP="0.3",
        TASKGROUPER_TAU_GRAD="0.3",
        TASKGROUPER_RHO="0.3",
        OMP_NUM_THREADS="1",  # tiny models: one thread is much faster
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers: list[subprocess.Popen[bytes]] = []
    engine = make_engine(worker_db)
    queue = CeleryQueue(broker)
    try:
        workers = [start_worker(f"w{i + 1}", env, log) for i, log in enumerate(logs)]
        maker = make_sessionmaker(engine)
        key = new_key(maker)
        with TestClient(create_app(settings, queue=queue)) as client:
            assert client.get("/readyz").status_code == 200
            wait_ready(workers, logs, timeout_s=90)
            auth = {"Authorization": f"Bearer {key}"}

            job_id = submit_job(client, key)
            job = wait_for(client, key, job_id, lambda j: j["status"] in TERMINAL, 120)
            detail = "\n".join(p.read_text()[-3000:] for p in logs)
            assert job["status"] == "succeeded", f"{job}\n{detail}"
            assert job["progress"] == 1.0 and job["stage"] == "done"
            rec = client.get(f"/recommendations/{job_id}", headers=auth)
            assert rec.status_code == 200, rec.text
            Recommendation.model_validate(rec.json())
            with maker() as session:
                results = repository.get_task_results(session=session, job_id=job_id)
            assert sorted(r.task for r in results) == sorted(TASKS)
            hosts = {r.metrics["hostname"].split("@")[0] for r in results}
            assert hosts == {"w1", "w2"}, f"fine-tunes ran on {hosts} only\n{detail}"

            slow = {"epochs": 50, "batch_size": 4, "max_length": 40, "probe_size": 64}
            job_id = submit_job(client, key, training=slow)
            wait_for(
                client,
                key,
                job_id,
                lambda j: j["status"] == "running" and j["progress"] > 0.03,
                60,
            )
            cancel = client.post(f"/jobs/{job_id}/cancel", headers=auth)
            assert cancel.status_code == 200, cancel.text
            job = wait_for(client, key, job_id, lambda j: j["status"] in TERMINAL, 60)
            assert job["status"] == "cancelled", job
    finally:
        stop_workers(workers)
        queue.close()
        engine.dispose()
