"""The embedded default end to end: `taskgrouper serve` in a subprocess, a job through HTTP.

No settings but a data directory and the model registry: SQLite and the local worker process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.schema import Recommendation
from models.synth import SynthSpec, write
from tests.live_server import embedded_server


@pytest.fixture
def served(tmp_path: Path, tiny_bert: Path) -> Iterator[tuple[httpx.Client, dict[str, str], int]]:
    with embedded_server(tmp_path, tiny_bert) as live:
        yield live.client, live.auth, live.pid


@pytest.mark.slow
def test_a_job_through_http_on_the_embedded_default(
    served: tuple[httpx.Client, dict[str, str], int], tmp_path: Path
) -> None:
    client, auth, pid = served
    data = tmp_path / "tickets.csv"
    write(SynthSpec(rows=200, features=(2, 1), seed=2), data)
    up = client.post("/datasets", files={"file": ("tickets.csv", data.read_bytes())}, headers=auth)
    assert up.status_code == 201, up.text
    body = {
        "dataset_id": up.json()["id"],
        "text_column": "text",
        "tasks": ["product", "product_flag", "severity"],
        "model": "tiny",
        "training": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 40},
    }
    submitted = client.post("/jobs", json=body, headers=auth)
    assert submitted.status_code == 202, submitted.text
    # Answered before the work: the job is still queued (or just picked up) when the 202 comes.
    assert submitted.json()["status"] in ("queued", "running"), submitted.text
    job_id = submitted.json()["id"]
    early = client.get(f"/recommendations/{job_id}", headers=auth)
    assert early.status_code in (200, 409)  # 409 names the status while the job runs

    deadline = time.monotonic() + 180
    while True:
        job = client.get(f"/jobs/{job_id}", headers=auth).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"job still {job['status']} ({job['stage']})"
        time.sleep(0.5)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0

    rec = client.get(f"/recommendations/{job_id}", headers=auth)
    assert rec.status_code == 200
    Recommendation.model_validate(rec.json())
    assert [t["name"] for t in rec.json()["tasks"]] == body["tasks"]
    assert client.get(f"/recommendations/{job_id}").status_code == 401

    # The API process serves without torch: the training ran in the local worker process.
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps
