"""The API's hot read paths: the API-key cache, the rendered-recommendation cache, and requests
that outnumber the database connections (they must wait, never deadlock)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app import repository
from app.caches import ApiKeyCache, RecommendationCache
from app.db import make_engine, make_sessionmaker, upgrade
from app.main import create_app
from app.queue import NullQueue
from app.tables import ApiKey, Recommendation, utcnow
from models.schema import Recommendation as RecommendationSchema
from tests.test_api import Api, assert_error, build_api, make_settings
from tests.test_api_jobs import make_job, sample_recommendation

pytestmark = pytest.mark.postgres


@pytest.fixture
def api(session: Session, tmp_path: Path) -> Api:
    return build_api(session, tmp_path)


def _succeeded_job(api: Api) -> str:
    api.dataset()
    job = make_job(api)
    repository.save_recommendation(session=api.session, job_id=job.id, body=sample_recommendation())
    repository.finish_job(session=api.session, job_id=job.id, status="succeeded")
    api.session.commit()
    return job.id


def _revoke_elsewhere(session: Session, name: str) -> None:
    """What `taskgrouper keys revoke` does in another process: this process is not told."""
    session.execute(update(ApiKey).where(ApiKey.name == name).values(revoked_at=utcnow()))
    session.commit()


# --------------------------------------------------------------------------------------------
# API keys


def test_a_key_revoked_in_this_process_stops_working_at_once(
    session: Session, tmp_path: Path
) -> None:
    api = build_api(session, tmp_path, api_key_cache_ttl_s=3600.0)
    assert api.client.get("/jobs", headers=api.auth()).status_code == 200  # now cached
    assert repository.revoke_api_key(session=session, name_or_prefix="alice") == 1
    session.commit()
    response = api.client.get("/jobs", headers=api.auth())
    assert_error(response, 401, None, "unknown or has been revoked")
    assert api.client.get("/jobs", headers=api.auth("bob")).status_code == 200


def test_a_key_revoked_elsewhere_stops_working_within_the_ttl(
    session: Session, tmp_path: Path
) -> None:
    api = build_api(session, tmp_path, api_key_cache_ttl_s=0.3)
    assert api.client.get("/jobs", headers=api.auth()).status_code == 200
    _revoke_elsewhere(session, "alice")
    assert api.client.get("/jobs", headers=api.auth()).status_code == 200  # trusted for 0.3 s
    time.sleep(0.35)
    assert_error(api.client.get("/jobs", headers=api.auth()), 401, None, "revoked")


def test_a_zero_ttl_checks_the_database_on_every_request(session: Session, tmp_path: Path) -> None:
    api = build_api(session, tmp_path, api_key_cache_ttl_s=0.0)
    assert api.client.get("/jobs", headers=api.auth()).status_code == 200
    _revoke_elsewhere(session, "alice")
    assert_error(api.client.get("/jobs", headers=api.auth()), 401, None, "revoked")


def test_unknown_keys_are_not_cached(session: Session, tmp_path: Path) -> None:
    api = build_api(session, tmp_path)
    cache: ApiKeyCache = api.app.state.key_cache
    bad = {"Authorization": "Bearer tg_not-a-real-key"}
    assert_error(api.client.get("/jobs", headers=bad), 401, None, "unknown")
    assert cache._entries == {}
    assert api.client.get("/jobs", headers=api.auth()).status_code == 200
    assert len(cache._entries) == 1


def test_key_cache_entries_expire() -> None:
    cache = ApiKeyCache(ttl_s=0.05)
    cache.put("digest", "alice")
    assert cache.get("digest") == "alice"
    time.sleep(0.06)
    assert cache.get("digest") is None
    off = ApiKeyCache(ttl_s=0.0)
    off.put("digest", "alice")
    assert off.get("digest") is None


# --------------------------------------------------------------------------------------------
# recommendations


def test_a_recommendation_is_rendered_once_and_still_owner_scoped(api: Api) -> None:
    job_id = _succeeded_job(api)
    url = f"/recommendations/{job_id}"
    first = api.client.get(url, headers=api.auth())
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    expected = RecommendationSchema.model_validate(sample_recommendation())
    assert first.content == expected.model_dump_json(by_alias=True).encode()
    # A recommendation never changes once written; the second answer comes from the cache,
    # not from the row (changed here only to tell the two apart).
    api.session.execute(
        update(Recommendation).where(Recommendation.job_id == job_id).values(body={})
    )
    api.session.commit()
    assert api.client.get(url, headers=api.auth()).content == first.content
    assert_error(api.client.get(url, headers=api.auth("bob")), 404, None, "no job")


def test_recommendation_cache_keeps_the_most_recent_within_its_size() -> None:
    cache = RecommendationCache(max_bytes=10)
    cache.put("a", "alice", b"12345")
    cache.put("b", "alice", b"12345")
    assert cache.get("a", "alice") == b"12345"  # now the most recent
    cache.put("c", "alice", b"123")
    assert cache.get("b", "alice") is None
    assert cache.get("a", "alice") == b"12345" and cache.get("c", "alice") == b"123"
    cache.put("huge", "alice", b"x" * 11)
    assert cache.get("huge", "alice") is None


def test_recommendation_cache_answers_only_the_owner() -> None:
    cache = RecommendationCache()
    cache.put("a", "alice", b"{}")
    assert cache.get("a", "alice") == b"{}"
    assert cache.get("a", "bob") is None


def test_get_job_answers_the_job_public_shape(api: Api) -> None:
    job_id = _succeeded_job(api)
    response = api.client.get(f"/jobs/{job_id}", headers=api.auth())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "succeeded" and body["stage"] == "done"
    assert body["links"] == {
        "self": f"/jobs/{job_id}",
        "cancel": f"/jobs/{job_id}/cancel",
        "recommendation": f"/recommendations/{job_id}",
    }


# --------------------------------------------------------------------------------------------
# more requests than connections


@pytest.mark.parametrize("path", ["/jobs/{id}", "/jobs", "/datasets"])
def test_more_requests_than_connections_wait_and_never_deadlock(tmp_path: Path, path: str) -> None:
    """90 concurrent requests, 40 threads, 2 connections: at most 2 requests hold a session at
    once, the others wait for one holding nothing (before, requests holding a connection waited
    for a thread held by requests waiting for a connection, until the pool timed out)."""
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    upgrade(url)
    engine = make_engine(url, pool_size=2, max_overflow=0, pool_timeout=5)
    maker = make_sessionmaker(engine)
    with maker() as session:
        _, key = repository.create_api_key(session=session, name="alice")
        job = repository.create_job(
            session=session,
            owner="alice",
            request={"tasks": [], "datasets": []},
            model="minilm-l6",
            request_hash="0" * 64,
            idempotency_key=None,
            dataset_ids=[],
        )
        session.commit()
    settings = make_settings(tmp_path, db_pool_size=2)
    app = create_app(settings, queue=NullQueue(), session_factory=maker)
    auth = {"Authorization": f"Bearer {key}"}

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answers = await asyncio.wait_for(
                asyncio.gather(
                    *(client.get(path.format(id=job.id), headers=auth) for _ in range(90))
                ),
                timeout=30,
            )
        return [a.status_code for a in answers]

    try:
        assert asyncio.run(burst()) == [200] * 90
    finally:
        engine.dispose()
