"""The fast lane of the polled reads (app/fastlane.py): the same answers as the routes, byte for
byte, for every job state; it answers only what the routes have already established and leaves
everything else (first requests, foreign or missing jobs, errors, revoked keys) to them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import repository
from app.db import make_engine, make_sessionmaker, upgrade
from app.main import create_app
from app.queue import NullQueue
from tests.db_fixtures import fresh_postgres_database
from tests.test_api import make_settings
from tests.test_api_jobs import sample_recommendation


@dataclass
class Lanes:
    """Two apps on one database: the fast lane on (``fast``) and off (``routes``)."""

    fast: TestClient
    routes: TestClient
    maker: sessionmaker[Session]
    keys: dict[str, str]
    jobs: dict[str, str]  # state -> job id (alice's)

    def auth(self, who: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    @property
    def answered(self) -> int:
        app: FastAPI = self.fast.app  # type: ignore[assignment]
        return int(app.state.fast_lane_answers)

    def both(self, path: str, headers: dict[str, str] | None = None) -> tuple[Any, Any]:
        """The answer of the routes, then of the app with the lane (warmed: its key checked)."""
        headers = self.auth() if headers is None else headers
        self.fast.get("/jobs", headers=headers)  # the first request with a key checks it
        return self.routes.get(path, headers=headers), self.fast.get(path, headers=headers)


TASK = {"name": "a", "dataset_id": str(uuid.uuid4()), "column": "a", "text_column": "text"}


def _job(session: Session, owner: str) -> str:
    job = repository.create_job(
        session=session,
        owner=owner,
        request={"tasks": [TASK], "datasets": [{"id": TASK["dataset_id"]}]},
        model="minilm-l6",
        request_hash="0" * 64,
        idempotency_key=None,
        dataset_ids=[],
    )
    session.flush()
    return job.id


def _seed(session: Session) -> tuple[dict[str, str], dict[str, str]]:
    keys = {}
    for who in ("alice", "bob"):
        _, keys[who] = repository.create_api_key(session=session, name=who)
    jobs = {state: _job(session, "alice") for state in ("queued", "running", "succeeded")}
    jobs |= {state: _job(session, "alice") for state in ("failed", "cancelled", "cancelling")}
    for state in ("running", "succeeded", "failed", "cancelled", "cancelling"):
        assert repository.mark_running(session=session, job_id=jobs[state])
    repository.update_progress(
        session=session, job_id=jobs["running"], stage="finetune", progress=0.4,
        timings={"finetune": 1.5},
    )  # fmt: skip
    repository.save_recommendation(
        session=session, job_id=jobs["succeeded"], body=sample_recommendation()
    )
    repository.finish_job(session=session, job_id=jobs["succeeded"], status="succeeded")
    repository.finish_job(session=session, job_id=jobs["failed"], status="failed", error="boom")
    repository.finish_job(session=session, job_id=jobs["cancelled"], status="cancelled")
    assert repository.request_cancel(session=session, owner="alice", job_id=jobs["cancelling"])
    session.commit()
    return keys, jobs


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'tg.db'}"
        else:
            url = stack.enter_context(fresh_postgres_database())
        upgrade(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        yield engine


@pytest.fixture
def lanes(engine: Engine, tmp_path: Path) -> Iterator[Lanes]:
    maker = make_sessionmaker(engine)
    with maker() as session:
        keys, jobs = _seed(session)

    def client(fast: bool) -> TestClient:
        settings = make_settings(tmp_path, fast_reads=fast, api_key_cache_ttl_s=3600.0)
        return TestClient(create_app(settings, queue=NullQueue(), session_factory=maker))

    with client(True) as fast, client(False) as routes:
        yield Lanes(fast, routes, maker, keys, jobs)


def _same(routes: Any, fast: Any) -> None:
    assert fast.status_code == routes.status_code
    assert fast.content == routes.content
    for header in ("content-type", "content-length", "www-authenticate", "retry-after"):
        assert fast.headers.get(header) == routes.headers.get(header), header


@pytest.mark.parametrize(
    "state", ["queued", "running", "succeeded", "failed", "cancelled", "cancelling"]
)
def test_a_job_reads_the_same_in_every_state(lanes: Lanes, state: str) -> None:
    before = lanes.answered
    routes, fast = lanes.both(f"/jobs/{lanes.jobs[state]}")
    assert routes.status_code == 200
    _same(routes, fast)
    assert lanes.answered == before + 1  # and the lane did answer it


def test_a_job_read_is_never_stale(lanes: Lanes) -> None:
    job_id = lanes.jobs["running"]
    assert lanes.both(f"/jobs/{job_id}")[1].json()["progress"] == 0.4
    with lanes.maker() as session:
        repository.update_progress(session=session, job_id=job_id, stage="similarity", progress=0.8)
        session.commit()
    routes, fast = lanes.both(f"/jobs/{job_id}")
    _same(routes, fast)
    assert fast.json()["progress"] == 0.8 and fast.json()["stage"] == "similarity"


def test_a_recommendation_is_answered_by_the_lane_once_rendered(lanes: Lanes) -> None:
    path = f"/recommendations/{lanes.jobs['succeeded']}"
    before = lanes.answered
    first = lanes.fast.get(path, headers=lanes.auth())  # rendered by the route, then kept
    assert first.status_code == 200 and lanes.answered == before
    routes, fast = lanes.both(path)
    _same(routes, fast)
    assert lanes.answered == before + 1


@pytest.mark.parametrize(
    "case",
    ["not-yet-succeeded", "another-owner", "missing", "uppercase-id", "not-a-uuid", "query"],
)
def test_what_the_lane_has_not_established_goes_to_the_routes(lanes: Lanes, case: str) -> None:
    job_id = lanes.jobs["succeeded"]
    lanes.fast.get(f"/recommendations/{job_id}", headers=lanes.auth())  # rendered and kept
    headers = lanes.auth("bob") if case == "another-owner" else lanes.auth()
    path = {
        "not-yet-succeeded": f"/recommendations/{lanes.jobs['running']}",
        "another-owner": f"/recommendations/{job_id}",
        "missing": f"/jobs/{uuid.uuid4()}",
        "uppercase-id": f"/jobs/{job_id.upper()}",
        "not-a-uuid": "/jobs/12345",
        "query": f"/jobs/{job_id}?fields=status",
    }[case]
    before = lanes.answered
    routes, fast = lanes.both(path, headers)
    _same(routes, fast)
    assert lanes.answered == before
    expected = {"not-yet-succeeded": 409, "another-owner": 404, "missing": 404}
    assert fast.status_code == expected.get(case, 200 if "uuid" not in case else 404)


def test_keys_the_process_has_not_found_live_go_to_the_routes(lanes: Lanes) -> None:
    path = f"/jobs/{lanes.jobs['running']}"
    before = lanes.answered
    for headers in (
        {},
        {"Authorization": "Bearer tg_unknown"},
        {"Authorization": f"Basic {lanes.keys['alice']}"},
        {"Authorization": "Bearer "},
    ):
        routes, fast = (
            lanes.routes.get(path, headers=headers),
            lanes.fast.get(path, headers=headers),
        )
        _same(routes, fast)
        assert fast.status_code == 401
    assert lanes.answered == before
    # The first request with a good key is the routes' too; it is checked, then the lane answers.
    assert lanes.fast.get(path, headers=lanes.auth()).status_code == 200
    assert lanes.answered == before
    assert lanes.fast.get(path, headers=lanes.auth()).status_code == 200
    assert lanes.answered == before + 1


def test_a_revoked_key_stops_at_once(lanes: Lanes) -> None:
    path = f"/recommendations/{lanes.jobs['succeeded']}"
    lanes.both(path)
    assert lanes.fast.get(path, headers=lanes.auth()).status_code == 200
    with lanes.maker() as session:  # revoked in this process: its key caches are emptied
        assert repository.revoke_api_key(session=session, name_or_prefix="alice") == 1
        session.commit()
    before = lanes.answered
    assert lanes.fast.get(path, headers=lanes.auth()).status_code == 401
    assert lanes.fast.get(f"/jobs/{lanes.jobs['running']}", headers=lanes.auth()).status_code == 401
    assert lanes.answered == before


def test_other_methods_go_to_the_routes(lanes: Lanes) -> None:
    path = f"/jobs/{lanes.jobs['running']}"
    lanes.both(path)
    before = lanes.answered
    for method in ("HEAD", "POST", "DELETE"):
        routes = lanes.routes.request(method, path, headers=lanes.auth())
        fast = lanes.fast.request(method, path, headers=lanes.auth())
        assert fast.status_code == routes.status_code != 200
    assert lanes.answered == before


def test_a_database_outage_is_the_routes_to_answer(lanes: Lanes) -> None:
    path = f"/jobs/{lanes.jobs['running']}"
    lanes.both(path)
    before = lanes.answered
    app: FastAPI = lanes.fast.app  # type: ignore[assignment]

    # The database goes away: its address now refuses connections (nothing listens on port 9).
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none", pool_pre_ping=False)
    app.state.sessionmaker = make_sessionmaker(down)
    lane = getattr(app.state, "fast_lane_own_engine", None)
    if lane is not None:  # PostgreSQL: the lane's own pool, on the live server
        lane.dispose()
    del app.state.fast_lane_engine
    response = lanes.fast.get(path, headers=lanes.auth())
    # The lane stepped aside and the route gave the API's 503, not a 500 from the middleware.
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert lanes.answered == before


def test_behind_a_proxy_prefix_the_links_keep_it(engine: Engine, tmp_path: Path) -> None:
    maker = make_sessionmaker(engine)
    with maker() as session:
        keys, jobs = _seed(session)
    settings = make_settings(tmp_path, api_key_cache_ttl_s=3600.0)
    app = create_app(settings, queue=NullQueue(), session_factory=maker)
    auth = {"Authorization": f"Bearer {keys['alice']}"}
    with TestClient(app, root_path="/api") as client:
        client.get("/api/jobs", headers=auth)
        first = client.get(f"/api/jobs/{jobs['running']}", headers=auth)
        answered = app.state.fast_lane_answers
        assert first.status_code == 200 and answered == 1
    assert first.json()["links"]["self"] == f"/api/jobs/{jobs['running']}"
