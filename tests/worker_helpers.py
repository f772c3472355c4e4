"""Helpers shared by the worker tests: tiny settings, a job submitted through the real API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app import repository
from app.settings import Settings
from models.synth import SynthSpec, generate

TASKS = ["product", "product_flag", "severity"]
TRAINING = {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 40, "probe_size": 64}


def synth_csv(rows: int = 200, seed: int = 3) -> bytes:
    frame, _ = generate(SynthSpec(rows=rows, features=(2, 1), seed=seed))
    return frame.to_csv(index=False).encode()


def tiny_settings(tmp_path: Path, model: Path, database_url: str, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=database_url,
        models={"tiny": str(model)},
        device="cpu",
        tau_rep=0.3,
        tau_grad=0.3,
        rho=0.3,
        **extra,
    )


def new_key(maker: Callable[[], Session], name: str = "alice") -> str:
    with maker() as session:
        _, key = repository.create_api_key(session=session, name=name)
        session.commit()
    return key


def submit_job(
    client: TestClient, key: str, *, training: dict[str, Any] | None = None, **body: Any
) -> str:
    """Upload the synthetic tickets and submit a job on TASKS; the job's id."""
    auth = {"Authorization": f"Bearer {key}"}
    up = client.post("/datasets", files={"file": ("tickets.csv", synth_csv())}, headers=auth)
    assert up.status_code == 201, up.text
    request = {
        "dataset_id": up.json()["id"],
        "text_column": "text",
        "tasks": TASKS,
        "model": "tiny",
        "training": training or TRAINING,
        "candidate_task_sets": [[["product", "product_flag"], ["severity"]]],
        **body,
    }
    response = client.post("/jobs", json=request, headers=auth)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for(
    client: TestClient,
    key: str,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until ``done(job)``; the job (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        job = response.json()
        if done(job):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not done in {timeout_s} s: {job}")
