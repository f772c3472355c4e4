"""Security against the live embedded service: owner isolation over every route (the matrix is
built from the OpenAPI document, so a new route cannot be left out), no key, keys stored only
hashed, and ``taskgrouper keys revoke`` taking effect."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import _RUN_CLI
from models.synth import SynthSpec, write
from tests.live_server import LiveServer, create_key, embedded_server

pytestmark = pytest.mark.slow

# Routes a browser uses, not in the OpenAPI document.
MISSING = "00000000-0000-4000-8000-000000000000"
UI_ROUTES = [("GET", "/ui/jobs"), ("GET", "/ui/jobs/state?ids={job_id}")]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("security")
    # No key cache: a revocation by the CLI (another process) takes effect at once.
    with embedded_server(root, tiny_bert, api_key_cache_ttl_s="0") as server:
        yield server


@pytest.fixture(scope="module")
def alices(live: LiveServer) -> dict[str, str]:
    """Alice's dataset, a finished job on it (with a recommendation), and a free dataset."""
    data = live.root / "tickets.csv"
    write(SynthSpec(rows=160, features=(2, 1), seed=7), data)
    up = live.client.post(
        "/datasets", files={"file": ("t.csv", data.read_bytes())}, headers=live.auth
    )
    free = live.client.post(
        "/datasets", files={"file": ("u.csv", data.read_bytes())}, headers=live.auth
    )
    body = {
        "dataset_id": up.json()["id"],
        "text_column": "text",
        "tasks": ["product", "product_flag", "severity"],
        "model": "tiny",
        "training": {"epochs": 1, "max_length": 32},
    }
    job = live.client.post("/jobs", json=body, headers=live.auth).json()
    deadline = time.monotonic() + 180
    while live.client.get(f"/jobs/{job['id']}", headers=live.auth).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    return {"dataset_id": free.json()["id"], "job_id": job["id"], "busy": up.json()["id"]}


def operations(live: LiveServer) -> list[tuple[str, str]]:
    spec = live.client.get("/openapi.json").json()
    return [(m.upper(), p) for p, item in spec["paths"].items() for m in item]


def fill(path: str, ids: dict[str, str]) -> str:
    return path.format(dataset_id=ids["dataset_id"], job_id=ids["job_id"], metric="cka")


def request(live: LiveServer, method: str, url: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {}
    if (method, url) == ("POST", "/datasets"):
        kwargs["files"] = {"file": ("x.csv", b"text,a\nhello,1\nworld,2\n")}
    if (method, url) == ("POST", "/jobs"):
        kwargs["json"] = {"dataset_id": "x", "text_column": "text", "tasks": ["a", "b"]}
    return live.client.request(method, url, headers=headers, **kwargs)


def test_every_route_isolates_owners(live: LiveServer, alices: dict[str, str]) -> None:
    mallory = {"Authorization": f"Bearer {create_key(live, 'mallory')}"}
    checked = []
    for method, path in [*operations(live), *UI_ROUTES]:
        if path in ("/healthz", "/readyz"):
            continue
        url = fill(path, alices)
        anonymous = request(live, method, url, {})
        if path.startswith("/ui/jobs") and "state" not in path:
            assert anonymous.status_code in (303, 401), (method, url)  # to the sign-in page
        else:
            assert anonymous.status_code == 401, (method, url, anonymous.text)
        answer = request(live, method, url, mallory)
        if "{" in path or "state" in path:  # names one of alice's rows
            if path.startswith("/ui/jobs/state"):
                assert answer.status_code == 200 and answer.json() == {"data": []}
            else:
                assert answer.status_code == 404, (method, url, answer.text)
                # Exactly what a row that does not exist answers: nothing tells them apart.
                missing = {k: MISSING for k in alices}
                unknown = request(live, method, fill(path, missing), mallory)
                for name, real in alices.items():
                    unknown_text = unknown.text.replace(MISSING, real)
                    if real in answer.text:
                        assert answer.text == unknown_text, (method, url, name)
                assert unknown.status_code == 404
        else:  # a listing or a creation: nothing of alice's shows
            assert answer.status_code in (200, 201, 422), (method, url, answer.text)
            assert alices["job_id"] not in answer.text and alices["dataset_id"] not in answer.text
        checked.append((method, path))
    assert len(checked) >= 14
    # Alice's rows are all still there, unchanged.
    job = live.client.get(f"/jobs/{alices['job_id']}", headers=live.auth).json()
    assert job["status"] == "succeeded"
    assert (
        live.client.get(f"/datasets/{alices['dataset_id']}", headers=live.auth).status_code == 200
    )


def test_keys_are_stored_hashed_and_revocable_from_the_cli(live: LiveServer) -> None:
    key = create_key(live, "temp")
    auth = {"Authorization": f"Bearer {key}"}
    assert live.client.get("/jobs", headers=auth).status_code == 200
    db = next((live.root / "data").glob("*.db"))
    assert key.encode() not in db.read_bytes()
    with sqlite3.connect(db) as conn:
        hashes = [row[0] for row in conn.execute("SELECT key_hash FROM api_keys")]
    assert all(len(h) == 64 and key not in h for h in hashes)
    revoked = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, "keys", "revoke", "temp"],
        env=live.env,
        cwd=live.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoked.returncode == 0, revoked.stderr
    answer = live.client.get("/jobs", headers=auth)
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]["message"]
