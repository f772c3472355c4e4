"""The repository (app/repository.py), on PostgreSQL and on SQLite.

Every test takes ``db_session``, parametrised over both back-ends (the PostgreSQL case is
marked ``postgres``); each runs inside a transaction rolled back afterwards. Tests that need
real concurrency (two connections) are PostgreSQL-only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import repository as repo
from app.db import make_sessionmaker
from app.tables import ApiKey, Dataset, Job, JobDataset, PairMetric, TaskResult

T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def db_session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """The rolled-back session of each back-end in turn."""
    name = "session" if request.param == "postgres" else "sqlite_session"
    yield request.getfixturevalue(name)


def make_dataset(session: Session, owner: str = "alice", **overrides: Any) -> Dataset:
    fields: dict[str, Any] = {
        "filename": "reviews.csv",
        "format": "csv",
        "size_bytes": 1234,
        "sha256": "ab" * 32,
        "row_count": 100,
        "columns": ["text", "sentiment", "topic"],
        "label_summary": {"sentiment": {"pos": 60, "neg": 40}},
        "artifact_path": "/artifacts/datasets/x.csv",
    }
    fields.update(overrides)
    return repo.create_dataset(session=session, owner=owner, **fields)


def make_job(
    session: Session,
    owner: str = "alice",
    dataset_ids: list[str] | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
    request_hash: str = "f" * 64,
) -> Job:
    if dataset_ids is None:
        dataset_ids = [make_dataset(session, owner).id]
    return repo.create_job(
        session=session,
        owner=owner,
        request={"tasks": ["sentiment", "topic"], "text_column": "text"},
        model="minilm-l6",
        request_hash=request_hash,
        idempotency_key=idempotency_key,
        dataset_ids=dataset_ids,
        now=now,
    )


def pair(a: str, b: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "task_a": a,
        "task_b": b,
        "cka_per_layer": [0.9, 0.8],
        "cka_min": 0.8,
        "cka_min_layer": 1,
        "cka_mean": 0.85,
        "grad_cosine": 0.3,
        "grad_cosine_per_layer": [0.2, 0.4],
        "conflict_rate": 0.1,
        "tag_ab": 0.01,
        "tag_ba": -0.02,
    }
    fields.update(overrides)
    return fields


# --------------------------------------------------------------------------------------------
# API keys


def test_api_key_is_stored_hashed_only(db_session: Session) -> None:
    row, key = repo.create_api_key(session=db_session, name="ci-bot")
    db_session.commit()

    assert key.startswith("tg_") and len(key) > 40
    assert row.owner == "ci-bot"
    assert row.prefix == key[:12]
    assert row.key_hash == repo.hash_api_key(key) and len(row.key_hash) == 64
    stored = db_session.execute(select(ApiKey.__table__)).one()._asdict()
    secret_part = key[12:]
    for column, value in stored.items():
        assert secret_part not in str(value), f"api_keys.{column} holds the key's secret part"


def test_api_key_owner_can_differ_from_name(db_session: Session) -> None:
    row, _ = repo.create_api_key(session=db_session, name="laptop", owner="alice")
    assert (row.name, row.owner) == ("laptop", "alice")


def test_authenticate(db_session: Session) -> None:
    row, key = repo.create_api_key(session=db_session, name="alice")
    repo.create_api_key(session=db_session, name="bob")

    found = repo.authenticate(session=db_session, key=key)
    assert found is not None and found.id == row.id
    assert repo.authenticate(session=db_session, key=key + "x") is None
    assert repo.authenticate(session=db_session, key="tg_" + "A" * 43) is None
    assert repo.authenticate(session=db_session, key="") is None
    assert repo.authenticate(session=db_session, key=row.key_hash) is None  # the hash is no key


def test_revoke_by_name_or_prefix(db_session: Session) -> None:
    old, old_key = repo.create_api_key(session=db_session, name="alice")
    new, new_key = repo.create_api_key(session=db_session, name="alice")
    other, other_key = repo.create_api_key(session=db_session, name="bob")

    assert repo.revoke_api_key(session=db_session, name_or_prefix=old.prefix) == 1
    assert repo.authenticate(session=db_session, key=old_key) is None
    assert repo.authenticate(session=db_session, key=new_key) is not None
    assert repo.revoke_api_key(session=db_session, name_or_prefix=old.prefix) == 0  # already

    assert repo.revoke_api_key(session=db_session, name_or_prefix="alice") == 1  # the live one
    assert repo.authenticate(session=db_session, key=new_key) is None
    assert repo.authenticate(session=db_session, key=other_key) is not None
    assert repo.revoke_api_key(session=db_session, name_or_prefix="nobody") == 0

    listed = repo.list_api_keys(session=db_session)
    assert [k.id for k in listed] == [old.id, new.id, other.id]
    assert [k.revoked for k in listed] == [True, True, False]
    live = repo.list_api_keys(session=db_session, include_revoked=False)
    assert [k.id for k in live] == [other.id]


# --------------------------------------------------------------------------------------------
# datasets


def test_dataset_round_trip_and_owner_isolation(db_session: Session) -> None:
    dataset = make_dataset(db_session)
    db_session.commit()
    db_session.expunge_all()

    got = repo.get_dataset(session=db_session, owner="alice", dataset_id=dataset.id)
    assert got is not None
    assert got.columns == ["text", "sentiment", "topic"]
    assert got.label_summary == {"sentiment": {"pos": 60, "neg": 40}}
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert repo.get_dataset(session=db_session, owner="bob", dataset_id=dataset.id) is None
    assert repo.get_dataset(session=db_session, owner="alice", dataset_id="nope") is None


def test_dataset_format_is_checked(db_session: Session) -> None:
    with pytest.raises(ValueError, match="format"):
        make_dataset(db_session, format="xlsx")


def test_list_datasets_pages(db_session: Session) -> None:
    ids = {make_dataset(db_session).id for _ in range(5)}
    make_dataset(db_session, owner="bob")
    page, cursor = repo.list_datasets(session=db_session, owner="alice", limit=3)
    assert len(page) == 3 and cursor is not None
    rest, end = repo.list_datasets(session=db_session, owner="alice", limit=3, cursor=cursor)
    assert len(rest) == 2 and end is None
    assert {d.id for d in page + rest} == ids


def test_delete_dataset_refused_while_an_active_job_uses_it(db_session: Session) -> None:
    dataset = make_dataset(db_session)
    job = make_job(db_session, dataset_ids=[dataset.id])

    assert repo.dataset_in_use(session=db_session, dataset_id=dataset.id)
    result = repo.delete_dataset(session=db_session, owner="alice", dataset_id=dataset.id)
    assert result is repo.DeleteResult.IN_USE
    assert repo.mark_running(session=db_session, job_id=job.id)
    result = repo.delete_dataset(session=db_session, owner="alice", dataset_id=dataset.id)
    assert result is repo.DeleteResult.IN_USE

    assert repo.finish_job(session=db_session, job_id=job.id, status="succeeded")
    assert not repo.dataset_in_use(session=db_session, dataset_id=dataset.id)
    result = repo.delete_dataset(session=db_session, owner="bob", dataset_id=dataset.id)
    assert result is repo.DeleteResult.NOT_FOUND  # another owner's
    result = repo.delete_dataset(session=db_session, owner="alice", dataset_id=dataset.id)
    assert result is repo.DeleteResult.DELETED
    db_session.commit()

    assert repo.get_dataset(session=db_session, owner="alice", dataset_id=dataset.id) is None
    kept = repo.get_job(session=db_session, owner="alice", job_id=job.id)
    assert kept is not None and kept.status == "succeeded"  # history survives
    assert kept.dataset_ids == []
    links = db_session.scalars(select(JobDataset).where(JobDataset.job_id == job.id)).all()
    assert links == []
    result = repo.delete_dataset(session=db_session, owner="alice", dataset_id=dataset.id)
    assert result is repo.DeleteResult.NOT_FOUND


def test_dataset_fk_restricts_raw_delete(db_session: Session) -> None:
    """The FK is a safety net: even bypassing the repository, a linked dataset stays."""
    dataset = make_dataset(db_session)
    make_job(db_session, dataset_ids=[dataset.id])
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(delete(Dataset).where(Dataset.id == dataset.id))


# --------------------------------------------------------------------------------------------
# jobs: creation, idempotency, owner scoping


def test_create_job(db_session: Session) -> None:
    first, second = make_dataset(db_session), make_dataset(db_session)
    job = make_job(db_session, dataset_ids=[first.id, second.id, first.id])
    db_session.commit()
    db_session.expunge_all()

    got = repo.get_job(session=db_session, owner="alice", job_id=job.id)
    assert got is not None
    assert (got.status, got.stage, got.progress, got.attempts) == ("queued", None, 0.0, 0)
    assert got.cancel_requested is False and got.timings == {}
    assert got.request == {"tasks": ["sentiment", "topic"], "text_column": "text"}
    assert sorted(got.dataset_ids) == sorted([first.id, second.id])
    assert got.created_at.tzinfo is not None
    assert got.started_at is None and got.finished_at is None


def test_create_job_refuses_other_owners_datasets(db_session: Session) -> None:
    bobs = make_dataset(db_session, owner="bob")
    with pytest.raises(repo.UnknownDatasets) as caught:
        make_job(db_session, owner="alice", dataset_ids=[bobs.id, "missing"])
    assert caught.value.dataset_ids == [bobs.id, "missing"]


def test_owner_isolation(db_session: Session) -> None:
    job = make_job(db_session)
    repo.save_recommendation(session=db_session, job_id=job.id, body={"groups": []})

    assert repo.get_job(session=db_session, owner="bob", job_id=job.id) is None
    assert repo.request_cancel(session=db_session, owner="bob", job_id=job.id) is None
    assert repo.get_recommendation(session=db_session, owner="bob", job_id=job.id) is None
    assert repo.list_jobs(session=db_session, owner="bob") == ([], None)
    assert repo.count_active_jobs(session=db_session, owner="bob") == 0
    loaded = repo.load_job(session=db_session, job_id=job.id)  # workers are not scoped
    assert loaded is not None and loaded.status == "queued"
    assert repo.load_job(session=db_session, job_id="missing") is None


def test_idempotency_key_is_unique_per_owner(db_session: Session) -> None:
    job = make_job(db_session, idempotency_key="k-1")
    db_session.commit()

    with pytest.raises(repo.IdempotencyKeyReused) as caught:
        make_job(db_session, idempotency_key="k-1", request_hash="0" * 64)
    assert caught.value.job.id == job.id
    assert caught.value.job.request_hash == "f" * 64  # the caller compares hashes

    found = repo.find_job_by_idempotency_key(session=db_session, owner="alice", key="k-1")
    assert found is not None and found.id == job.id
    assert repo.find_job_by_idempotency_key(session=db_session, owner="bob", key="k-1") is None
    other = make_job(db_session, owner="bob", idempotency_key="k-1")  # keys are per owner
    assert other.id != job.id
    make_job(db_session)  # no key: never a conflict
    make_job(db_session)
    db_session.commit()  # the session is still usable


def test_idempotency_key_enforced_by_the_database(db_session: Session) -> None:
    make_job(db_session, idempotency_key="k-2")
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(
            Job(owner="alice", request={}, model="m", request_hash="0" * 64, idempotency_key="k-2")
        )


def test_count_active_jobs(db_session: Session) -> None:
    jobs = [make_job(db_session) for _ in range(4)]
    make_job(db_session, owner="bob")
    repo.mark_running(session=db_session, job_id=jobs[1].id)
    repo.finish_job(session=db_session, job_id=jobs[2].id, status="failed", error="boom")
    repo.request_cancel(session=db_session, owner="alice", job_id=jobs[3].id)
    assert repo.count_active_jobs(session=db_session, owner="alice") == 2


# --------------------------------------------------------------------------------------------
# pagination


def _page_through(session: Session, **kwargs: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        jobs, cursor = repo.list_jobs(session=session, owner="alice", cursor=cursor, **kwargs)
        pages.append([j.id for j in jobs])
        if cursor is None:
            return pages


def test_list_jobs_pages_newest_first(db_session: Session) -> None:
    dataset = make_dataset(db_session)
    jobs = [
        make_job(db_session, dataset_ids=[dataset.id], now=T0 + timedelta(seconds=i))
        for i in range(25)
    ]
    make_job(db_session, owner="bob", now=T0)

    pages = _page_through(db_session, limit=10)
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [i for p in pages for i in p]
    assert flat == [j.id for j in reversed(jobs)]


def test_list_jobs_is_stable_under_equal_created_at(db_session: Session) -> None:
    dataset = make_dataset(db_session)
    same = [make_job(db_session, dataset_ids=[dataset.id], now=T0) for _ in range(13)]
    older = [make_job(db_session, dataset_ids=[dataset.id], now=T0 - timedelta(hours=1))]
    newer = [make_job(db_session, dataset_ids=[dataset.id], now=T0 + timedelta(microseconds=1))]
    # The same instant expressed in another time zone is the same instant.
    other_zone = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    same += [make_job(db_session, dataset_ids=[dataset.id], now=other_zone)]

    pages = _page_through(db_session, limit=4)
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)) == 16
    assert flat[0] == newer[0].id and flat[-1] == older[0].id
    assert flat[1:15] == sorted((j.id for j in same), reverse=True)


def test_list_jobs_filters_by_status(db_session: Session) -> None:
    dataset = make_dataset(db_session)
    jobs = [
        make_job(db_session, dataset_ids=[dataset.id], now=T0 + timedelta(seconds=i))
        for i in range(12)
    ]
    for job in jobs[::3]:
        repo.finish_job(session=db_session, job_id=job.id, status="failed")

    pages = _page_through(db_session, status="failed", limit=2)
    assert [i for p in pages for i in p] == [j.id for j in reversed(jobs[::3])]
    queued, cursor = repo.list_jobs(session=db_session, owner="alice", status="queued", limit=20)
    assert len(queued) == 8 and cursor is None
    with pytest.raises(ValueError, match="status"):
        repo.list_jobs(session=db_session, owner="alice", status="done")


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor", "bm9wZQ", "W10", repo.encode_cursor(T0, "x") + "A", "!!!!", "é" * 8],
)
def test_list_jobs_rejects_bad_cursors(db_session: Session, cursor: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        repo.list_jobs(session=db_session, owner="alice", cursor=cursor)


def test_cursor_round_trip_and_limits(db_session: Session) -> None:
    job_id = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
    cursor = repo.encode_cursor(T0, job_id)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert repo.decode_cursor(cursor) == (T0, job_id)
    with pytest.raises(ValueError, match="invalid cursor"):
        repo.decode_cursor(repo.encode_cursor(T0, "not-a-uuid"))
    for limit in (0, repo.MAX_PAGE_SIZE + 1):
        with pytest.raises(ValueError, match="limit"):
            repo.list_jobs(session=db_session, owner="alice", limit=limit)


# --------------------------------------------------------------------------------------------
# the status machine


def test_mark_running(db_session: Session) -> None:
    job = make_job(db_session)
    t1, t2 = T0, T0 + timedelta(minutes=5)

    assert repo.mark_running(session=db_session, job_id=job.id, now=t1)
    assert (job.status, job.attempts, job.started_at, job.heartbeat_at) == ("running", 1, t1, t1)
    assert repo.mark_running(session=db_session, job_id=job.id, now=t2)  # redelivery
    assert (job.attempts, job.started_at, job.heartbeat_at) == (2, t1, t2)
    assert not repo.mark_running(session=db_session, job_id="missing")


def test_mark_running_refuses_terminal_and_cancel_requested(db_session: Session) -> None:
    done, cancelled, asked = make_job(db_session), make_job(db_session), make_job(db_session)
    repo.finish_job(session=db_session, job_id=done.id, status="succeeded")
    repo.request_cancel(session=db_session, owner="alice", job_id=cancelled.id)
    repo.mark_running(session=db_session, job_id=asked.id)
    repo.request_cancel(session=db_session, owner="alice", job_id=asked.id)

    for job in (done, cancelled, asked):
        attempts = job.attempts
        assert not repo.mark_running(session=db_session, job_id=job.id)
        assert job.attempts == attempts
    assert (done.status, cancelled.status, asked.status) == ("succeeded", "cancelled", "running")


def test_cancel_queued_job_is_immediate(db_session: Session) -> None:
    job = make_job(db_session)
    cancelled = repo.request_cancel(session=db_session, owner="alice", job_id=job.id, now=T0)
    assert cancelled is not None
    assert (cancelled.status, cancelled.finished_at, cancelled.cancel_requested) == (
        "cancelled",
        T0,
        True,
    )
    assert repo.is_cancel_requested(session=db_session, job_id=job.id)


def test_cancel_running_job_is_requested(db_session: Session) -> None:
    job = make_job(db_session)
    repo.mark_running(session=db_session, job_id=job.id)
    assert not repo.is_cancel_requested(session=db_session, job_id=job.id)

    asked = repo.request_cancel(session=db_session, owner="alice", job_id=job.id)
    assert asked is not None
    assert (asked.status, asked.cancel_requested, asked.finished_at) == ("running", True, None)
    assert repo.is_cancel_requested(session=db_session, job_id=job.id)
    assert repo.finish_job(session=db_session, job_id=job.id, status="cancelled")
    assert job.status == "cancelled" and job.finished_at is not None


def test_cancel_terminal_job_changes_nothing(db_session: Session) -> None:
    job = make_job(db_session)
    repo.finish_job(session=db_session, job_id=job.id, status="succeeded", now=T0)
    again = repo.request_cancel(session=db_session, owner="alice", job_id=job.id)
    assert again is not None
    assert (again.status, again.cancel_requested, again.finished_at) == ("succeeded", False, T0)
    assert not repo.is_cancel_requested(session=db_session, job_id=job.id)
    assert repo.is_cancel_requested(session=db_session, job_id="missing")  # gone: stop


def test_finish_job_never_overwrites_terminal(db_session: Session) -> None:
    job = make_job(db_session)
    repo.mark_running(session=db_session, job_id=job.id)
    assert repo.finish_job(session=db_session, job_id=job.id, status="succeeded", now=T0)
    assert (job.status, job.stage, job.progress, job.finished_at) == ("succeeded", "done", 1.0, T0)

    later = T0 + timedelta(hours=1)
    assert not repo.finish_job(
        session=db_session, job_id=job.id, status="failed", error="late", now=later
    )
    assert not repo.finish_job(session=db_session, job_id=job.id, status="succeeded", now=later)
    assert (job.status, job.error, job.finished_at) == ("succeeded", None, T0)

    failed = make_job(db_session)
    assert repo.finish_job(session=db_session, job_id=failed.id, status="failed", error="OOM")
    assert not repo.finish_job(session=db_session, job_id=failed.id, status="cancelled")
    assert (failed.status, failed.error) == ("failed", "OOM")
    with pytest.raises(ValueError, match="status"):
        repo.finish_job(session=db_session, job_id=failed.id, status="running")


def test_status_check_constraint(db_session: Session) -> None:
    job = make_job(db_session)
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(update(Job).where(Job.id == job.id).values(status="paused"))


def test_progress_never_decreases(db_session: Session) -> None:
    job = make_job(db_session)
    assert not repo.update_progress(  # not running yet: nothing written
        session=db_session, job_id=job.id, stage="prepare", progress=0.1
    )
    repo.mark_running(session=db_session, job_id=job.id, now=T0)

    assert repo.update_progress(
        session=db_session, job_id=job.id, stage="finetune", progress=0.4, timings={"prepare": 2}
    )
    assert (job.stage, job.progress, job.timings) == ("finetune", 0.4, {"prepare": 2.0})
    assert job.heartbeat_at is not None and job.heartbeat_at > T0
    assert repo.update_progress(
        session=db_session,
        job_id=job.id,
        stage="finetune",
        progress=0.2,
        timings={"finetune": 30.5},
    )
    assert (job.progress, job.timings) == (0.4, {"prepare": 2.0, "finetune": 30.5})
    assert repo.update_progress(session=db_session, job_id=job.id, stage="grouping", progress=0.9)
    assert (job.stage, job.progress) == ("grouping", 0.9)

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="progress"):
            repo.update_progress(session=db_session, job_id=job.id, stage="done", progress=bad)
    with pytest.raises(ValueError, match="stage"):
        repo.update_progress(session=db_session, job_id=job.id, stage="training", progress=0.9)

    repo.finish_job(session=db_session, job_id=job.id, status="cancelled")
    assert not repo.update_progress(session=db_session, job_id=job.id, stage="done", progress=1)
    assert job.progress == 0.9


def test_heartbeat(db_session: Session) -> None:
    job = make_job(db_session)
    assert not repo.heartbeat(session=db_session, job_id=job.id)
    repo.mark_running(session=db_session, job_id=job.id, now=T0)
    assert repo.heartbeat(session=db_session, job_id=job.id, now=T0 + timedelta(minutes=1))
    assert job.heartbeat_at == T0 + timedelta(minutes=1)


def test_stale_running_jobs(db_session: Session) -> None:
    fresh, stale, queued, finished = (make_job(db_session) for _ in range(4))
    repo.mark_running(session=db_session, job_id=fresh.id, now=T0)
    repo.mark_running(session=db_session, job_id=stale.id, now=T0)
    repo.mark_running(session=db_session, job_id=finished.id, now=T0)
    repo.finish_job(session=db_session, job_id=finished.id, status="failed")
    repo.heartbeat(session=db_session, job_id=fresh.id, now=T0 + timedelta(minutes=10))

    cutoff = T0 + timedelta(minutes=5)
    found = {j.id for j in repo.stale_running_jobs(session=db_session, older_than=cutoff)}
    assert stale.id in found
    assert not found & {fresh.id, queued.id, finished.id}
    in_tokyo = cutoff.astimezone(timezone(timedelta(hours=9)))
    found = {j.id for j in repo.stale_running_jobs(session=db_session, older_than=in_tokyo)}
    assert stale.id in found and fresh.id not in found
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.stale_running_jobs(session=db_session, older_than=datetime(2025, 1, 1))


def test_naive_timestamps_are_refused(db_session: Session) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_job(db_session, now=datetime(2025, 1, 1, 12))


# --------------------------------------------------------------------------------------------
# results


def test_save_task_result_is_idempotent(db_session: Session) -> None:
    job = make_job(db_session)
    first = repo.save_task_result(
        session=db_session,
        job_id=job.id,
        task="sentiment",
        seed=0,
        macro_f1=0.8,
        accuracy=0.85,
        steps=120,
        seconds=12.5,
        metrics={"loss": [1.0, 0.5], "classes": ["neg", "pos"]},
        weights_path="/artifacts/w0",
    )
    again = repo.save_task_result(
        session=db_session,
        job_id=job.id,
        task="sentiment",
        seed=0,
        macro_f1=0.1,
        accuracy=0.1,
        steps=1,
        seconds=1.0,
    )
    assert again.id == first.id and again.macro_f1 == 0.8
    repo.save_task_result(
        session=db_session,
        job_id=job.id,
        task="sentiment",
        seed=1,
        macro_f1=0.7,
        accuracy=0.8,
        steps=120,
        seconds=11.0,
    )
    repo.save_task_result(
        session=db_session,
        job_id=job.id,
        task="topic",
        seed=0,
        macro_f1=0.6,
        accuracy=0.7,
        steps=100,
        seconds=10.0,
        reps_path="/artifacts/r0",
    )
    db_session.commit()
    db_session.expunge_all()

    results = repo.get_task_results(session=db_session, job_id=job.id)
    assert [(r.task, r.seed) for r in results] == [("sentiment", 0), ("sentiment", 1), ("topic", 0)]
    assert results[0].metrics == {"loss": [1.0, 0.5], "classes": ["neg", "pos"]}
    assert (results[0].weights_path, results[0].reps_path) == ("/artifacts/w0", None)
    assert results[1].metrics == {}


def test_save_task_result_for_missing_job_fails(db_session: Session) -> None:
    with pytest.raises(IntegrityError):
        repo.save_task_result(
            session=db_session,
            job_id="missing",
            task="t",
            seed=0,
            macro_f1=0,
            accuracy=0,
            steps=0,
            seconds=0,
        )


def test_save_pair_metrics_replaces(db_session: Session) -> None:
    job = make_job(db_session)
    repo.save_pair_metrics(
        session=db_session, job_id=job.id, pairs=[pair("a", "b"), pair("a", "c")]
    )
    repo.save_pair_metrics(
        session=db_session, job_id=job.id, pairs=[pair("a", "b", cka_min=0.5), pair("b", "c")]
    )
    rows = repo.get_pair_metrics(session=db_session, job_id=job.id)
    assert [(r.task_a, r.task_b, r.cka_min) for r in rows] == [("a", "b", 0.5), ("b", "c", 0.8)]
    assert rows[0].cka_per_layer == [0.9, 0.8] and rows[0].tag_ba == -0.02

    with pytest.raises(ValueError, match=r"pairs\[0\]: missing \['tag_ba'\]"):
        bad = pair("a", "b")
        del bad["tag_ba"]
        repo.save_pair_metrics(session=db_session, job_id=job.id, pairs=[bad])
    with pytest.raises(ValueError, match="unknown"):
        repo.save_pair_metrics(
            session=db_session, job_id=job.id, pairs=[pair("a", "b", affinity=1.0)]
        )
    assert len(repo.get_pair_metrics(session=db_session, job_id=job.id)) == 2  # untouched
    repo.save_pair_metrics(session=db_session, job_id=job.id, pairs=[])
    assert repo.get_pair_metrics(session=db_session, job_id=job.id) == []


def test_recommendation_is_idempotent_and_owner_scoped(db_session: Session) -> None:
    job = make_job(db_session)
    assert repo.get_recommendation(session=db_session, owner="alice", job_id=job.id) is None
    body = {"groups": [["sentiment", "topic"]], "verdict": {"ok": True}}
    saved = repo.save_recommendation(session=db_session, job_id=job.id, body=body)
    again = repo.save_recommendation(session=db_session, job_id=job.id, body={"other": 1})
    assert again is saved and again.body == body
    db_session.commit()
    db_session.expunge_all()

    got = repo.get_recommendation(session=db_session, owner="alice", job_id=job.id)
    assert got is not None and got.body == body
    assert repo.get_recommendation(session=db_session, owner="bob", job_id=job.id) is None


def test_deleting_a_job_cascades(db_session: Session) -> None:
    job = make_job(db_session)
    repo.save_task_result(
        session=db_session,
        job_id=job.id,
        task="t",
        seed=0,
        macro_f1=0,
        accuracy=0,
        steps=0,
        seconds=0,
    )
    repo.save_pair_metrics(session=db_session, job_id=job.id, pairs=[pair("a", "b")])
    repo.save_recommendation(session=db_session, job_id=job.id, body={})
    db_session.execute(delete(Job).where(Job.id == job.id))
    db_session.expunge_all()
    for model in (TaskResult, PairMetric, JobDataset):
        assert db_session.scalars(select(model).where(model.job_id == job.id)).all() == []


# --------------------------------------------------------------------------------------------
# isolation: these two run in this order; the first commits, the second must not see it


def test_isolation_commit(db_session: Session) -> None:
    make_dataset(db_session, owner="isolation-check")
    db_session.commit()
    assert repo.list_datasets(session=db_session, owner="isolation-check")[0]


def test_isolation_nothing_leaked(db_session: Session) -> None:
    assert repo.list_datasets(session=db_session, owner="isolation-check") == ([], None)


# --------------------------------------------------------------------------------------------
# PostgreSQL-only: real concurrency between two connections


def _wait_for_lock_wait(engine: Engine, timeout_s: float = 10.0) -> bool:
    """Wait until some backend of this database is blocked on a lock."""
    deadline = time.monotonic() + timeout_s
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).scalar():
                return True
            conn.rollback()
            time.sleep(0.02)
    return False


@pytest.mark.postgres
def test_concurrent_idempotency_key_race(pg_engine: Engine) -> None:
    """Two requests with one key: the loser blocks on the unique index, then is told who won."""
    owner = f"race-{datetime.now(UTC).timestamp()}"
    factory = make_sessionmaker(pg_engine)
    outcome: dict[str, Any] = {}
    try:
        with factory() as first:
            dataset = make_dataset(first, owner=owner)
            first.commit()
            winner = make_job(first, owner=owner, dataset_ids=[dataset.id], idempotency_key="k")

            def second_request() -> None:
                with factory() as second:
                    try:
                        make_job(second, owner=owner, dataset_ids=[dataset.id], idempotency_key="k")
                    except repo.IdempotencyKeyReused as error:
                        outcome["job_id"] = error.job.id
                    except Exception as error:  # pragma: no cover - reported below
                        outcome["error"] = error

            thread = threading.Thread(target=second_request)
            thread.start()
            assert _wait_for_lock_wait(pg_engine), "the second insert should wait on the first"
            assert not outcome
            first.commit()
            thread.join(10)
        assert outcome == {"job_id": winner.id}
    finally:
        with factory() as cleanup:
            cleanup.execute(delete(Job).where(Job.owner == owner))
            cleanup.execute(delete(Dataset).where(Dataset.owner == owner))
            cleanup.commit()


@pytest.mark.postgres
def test_submissions_of_one_owner_are_serialised(pg_engine: Engine) -> None:
    """Count-then-insert holds the quota: a second submission of the same owner waits for the
    first's transaction to end before it counts; another owner's does not wait."""
    owner = f"quota-{datetime.now(UTC).timestamp()}"
    factory = make_sessionmaker(pg_engine)
    counted: list[int] = []
    with factory() as first:
        repo.lock_owner_submissions(session=first, owner=owner)
        with factory() as other:  # another owner: not held up
            repo.lock_owner_submissions(session=other, owner=owner + "-other")
            other.rollback()

        def second_request() -> None:
            with factory() as second:
                repo.lock_owner_submissions(session=second, owner=owner)
                counted.append(repo.count_active_jobs(session=second, owner=owner))

        thread = threading.Thread(target=second_request)
        thread.start()
        assert _wait_for_lock_wait(pg_engine), "the second submission should wait on the first"
        assert not counted
        first.commit()
        thread.join(10)
    assert counted == [0]


def test_lock_owner_submissions_is_a_no_op_on_sqlite(sqlite_session: Session) -> None:
    repo.lock_owner_submissions(session=sqlite_session, owner="alice")
    assert repo.count_active_jobs(session=sqlite_session, owner="alice") == 0
