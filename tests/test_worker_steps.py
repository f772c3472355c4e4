"""The job pipeline's step functions (worker/pipeline_steps.py) on a committed PostgreSQL
database: a job to the end, idempotency, cancellation, failures, the sweep."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app import repository
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.queue import NullQueue
from app.settings import Settings
from app.tables import Base, Job, PairMetric, Recommendation, TaskResult, utcnow
from models.schema import Recommendation as RecommendationSchema
from tests.worker_helpers import TASKS, new_key, submit_job, tiny_settings
from worker import pipeline_steps as steps
from worker.local import recover, run_job_locally

pytestmark = pytest.mark.postgres


@dataclass
class World:
    settings: Settings
    maker: sessionmaker[Session]
    client: TestClient
    key: str
    ctx: steps.StepContext

    def job(self, job_id: str) -> Job:
        with self.maker() as session:
            job = repository.load_job(session=session, job_id=job_id)
            assert job is not None
            return job

    def count(self, table: type[object], job_id: str) -> int:
        with self.maker() as session:
            stmt = select(func.count()).select_from(table).where(table.job_id == job_id)  # type: ignore[attr-defined]
            return int(session.scalar(stmt) or 0)


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    # These tests commit (workers do); leave the shared test database as empty as the
    # rolled-back tests of other modules expect it, whatever order the modules run in.
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def world(engine: Engine, database_url: str, tiny_bert: Path, tmp_path: Path) -> Iterator[World]:
    settings = tiny_settings(tmp_path, tiny_bert, database_url)
    maker = make_sessionmaker(engine)
    app = create_app(settings, queue=NullQueue(), session_factory=maker)
    ctx = steps.StepContext(
        settings=settings, sessionmaker=maker, hostname="test@host", report_interval_s=0.0
    )
    with TestClient(app) as client:
        yield World(settings, maker, client, new_key(maker), ctx)


def test_job_runs_to_succeeded_with_a_valid_recommendation(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    run_job_locally(world.ctx, job_id)
    job = world.job(job_id)
    assert (job.status, job.stage, job.progress, job.error) == ("succeeded", "done", 1.0, None)
    assert job.attempts == 1 and job.started_at is not None and job.finished_at is not None
    assert {"finetune", "similarity", "alignment", "grouping"} <= set(job.timings)
    with world.maker() as session:
        body = session.get(Recommendation, job_id)
        assert body is not None
        rec = RecommendationSchema.model_validate(body.body)
        results = repository.get_task_results(session=session, job_id=job_id)
    assert sorted(t.name for t in rec.tasks) == sorted(TASKS)
    assert [r.task for r in results] == sorted(TASKS)
    assert all(r.metrics["hostname"] == "test@host" for r in results)
    assert all(Path(r.reps_path or "").is_file() for r in results)
    assert all(f"jobs/{job_id}" in (r.weights_path or "") for r in results)
    assert world.count(PairMetric, job_id) == 3
    served = world.client.get(
        f"/recommendations/{job_id}", headers={"Authorization": f"Bearer {world.key}"}
    )
    assert served.status_code == 200 and served.json()["grouping"]


def test_steps_are_idempotent_and_the_analysis_is_claimed_once(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    outcome = steps.start_job(world.ctx, job_id)
    assert outcome.finetune == TASKS and not outcome.analyze
    assert steps.start_job(world.ctx, job_id) == steps.StartOutcome()  # running: a duplicate
    assert steps.finetune(world.ctx, job_id, TASKS[0]) is False
    first = world.job(job_id).progress
    assert steps.finetune(world.ctx, job_id, TASKS[0]) is False  # stored already: skipped
    assert world.count(TaskResult, job_id) == 1
    assert steps.finetune(world.ctx, job_id, TASKS[1]) is False
    assert steps.finetune(world.ctx, job_id, TASKS[2]) is True  # the last one claims analysis
    assert world.job(job_id).progress > first > 0
    assert steps.finetune(world.ctx, job_id, TASKS[2]) is False  # claimed once only
    with world.maker() as session:
        assert repository.claim_analysis(session=session, job_id=job_id) is False
    assert world.count(TaskResult, job_id) == 3
    steps.analyze(world.ctx, job_id)
    assert world.job(job_id).status == "succeeded"
    steps.analyze(world.ctx, job_id)  # a redelivery: nothing changes
    assert world.count(PairMetric, job_id) == 3
    assert world.job(job_id).status == "succeeded"


def test_restart_after_a_lost_worker_keeps_finished_finetunes(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    steps.start_job(world.ctx, job_id)
    steps.finetune(world.ctx, job_id, TASKS[0])
    later = utcnow() + timedelta(seconds=world.settings.heartbeat_timeout_s + 1)
    outcome = steps.start_job(world.ctx, job_id, now=later)  # the sweep's restart
    assert outcome.finetune == TASKS[1:]
    assert world.job(job_id).attempts == 2


def test_cancel_requested_mid_run_ends_cancelled(world: World) -> None:
    job_id = submit_job(world.client, world.key, training={"epochs": 3, "batch_size": 8})
    owner = world.job(job_id).owner
    calls = {"n": 0}

    def cancel_on_third_check() -> bool:  # the API's cancel arriving while it trains
        calls["n"] += 1
        if calls["n"] == 3:
            with world.maker() as session:
                repository.request_cancel(session=session, owner=owner, job_id=job_id)
                session.commit()
        return False

    ctx = steps.StepContext(
        settings=world.settings,
        sessionmaker=world.maker,
        hostname="test@host",
        stop_requested=cancel_on_third_check,
        report_interval_s=0.0,
    )
    run_job_locally(ctx, job_id)
    job = world.job(job_id)
    assert (job.status, job.cancel_requested) == ("cancelled", True)
    assert calls["n"] == 3  # it stopped at the very check that saw the request
    assert world.count(TaskResult, job_id) == 0


def test_a_deleted_dataset_file_fails_the_job_with_the_reason(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    with world.maker() as session:
        job = repository.load_job(session=session, job_id=job_id)
        assert job is not None
        Path(job.datasets[0].artifact_path).unlink()
    run_job_locally(world.ctx, job_id)
    job = world.job(job_id)
    assert job.status == "failed"
    assert job.error and "tickets.csv" in job.error and "cannot be read" in job.error


def test_a_model_error_fails_the_job_with_its_message(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    ctx = steps.StepContext(
        settings=world.settings.model_copy(update={"models": {}}),
        sessionmaker=world.maker,
        hostname="test@host",
    )
    run_job_locally(ctx, job_id)
    job = world.job(job_id)
    assert job.status == "failed" and job.error and "tiny" in job.error


def test_sweep_restarts_then_fails_stale_running_jobs(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    timeout = world.settings.heartbeat_timeout_s
    now = utcnow()
    # Queued for over a minute: its message may be lost, so it is sent again (once a while).
    out = steps.sweep(world.ctx, now=now + timedelta(minutes=2))
    assert job_id in out.restart
    assert job_id not in steps.sweep(world.ctx, now=now + timedelta(minutes=2, seconds=5)).restart
    steps.start_job(world.ctx, job_id)
    assert job_id not in steps.sweep(world.ctx, now=utcnow()).restart  # fresh heartbeat
    for attempt in (2, 3):  # the worker is lost; the sweep restarts the job
        later = utcnow() + timedelta(seconds=timeout + 1)
        out = steps.sweep(world.ctx, now=later)
        assert job_id in out.restart and job_id not in out.failed
        steps.start_job(world.ctx, job_id, now=later)
        assert world.job(job_id).attempts == attempt
    out = steps.sweep(world.ctx, now=utcnow() + timedelta(seconds=timeout + 1))
    assert job_id in out.failed and job_id not in out.restart
    job = world.job(job_id)
    assert (job.status, job.error) == ("failed", "worker lost 3 times")


def test_a_redelivered_task_counts_an_attempt(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    steps.start_job(world.ctx, job_id)
    with world.maker() as session:
        session.execute(update(Job).where(Job.id == job_id).values(attempts=3))
        session.commit()
    assert steps.finetune(world.ctx, job_id, TASKS[0], redelivered=True) is False
    job = world.job(job_id)
    assert (job.status, job.error) == ("failed", "worker lost 3 times")


def test_finished_jobs_are_left_alone(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    with world.maker() as session:
        repository.request_cancel(session=session, owner=world.job(job_id).owner, job_id=job_id)
        session.commit()
    assert steps.start_job(world.ctx, job_id) == steps.StartOutcome()
    assert steps.finetune(world.ctx, job_id, TASKS[0]) is False
    steps.analyze(world.ctx, job_id)
    assert world.job(job_id).status == "cancelled"


def test_the_embedded_worker_requeues_jobs_left_running(world: World) -> None:
    resumed, spent = submit_job(world.client, world.key), submit_job(world.client, world.key)
    for job_id in (resumed, spent):
        steps.start_job(world.ctx, job_id)
    steps.finetune(world.ctx, resumed, TASKS[0])
    with world.maker() as session:
        session.execute(update(Job).where(Job.id == spent).values(attempts=3))
        session.commit()
    recover(world.ctx)  # what a fresh embedded worker does first
    assert (world.job(resumed).status, world.job(resumed).attempts) == ("queued", 1)
    assert (world.job(spent).status, world.job(spent).error) == ("failed", "worker lost 3 times")
    run_job_locally(world.ctx, resumed)
    job = world.job(resumed)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert world.count(TaskResult, resumed) == 3


def test_two_deliveries_at_the_same_instant_start_the_job_once(world: World) -> None:
    """A duplicate start message taken at the very instant of the first: only a retry of the
    same call may take a running job's fresh heartbeat for its own write."""
    job_id = submit_job(world.client, world.key)
    assert steps.start_job(world.ctx, job_id).finetune == TASKS
    beat = world.job(job_id).heartbeat_at  # the first delivery's last write
    assert beat is not None
    for offset_us in (0, 400, -400):  # a second delivery at that instant, or within a millisecond
        now = beat.replace(tzinfo=beat.tzinfo or UTC) + timedelta(microseconds=offset_us)
        assert steps.start_job(world.ctx, job_id, now=now) == steps.StartOutcome()
    assert world.job(job_id).attempts == 1
    _end(world, job_id)


def test_a_retried_start_recognises_its_own_committed_write(world: World) -> None:
    """The first try's commit reaches the database but its reply is lost: the retry finds the
    job running with its own heartbeat and goes on, instead of leaving it to the sweep."""
    job_id = submit_job(world.client, world.key)
    lost = {"armed": True}

    def reply_lost_once() -> Session:
        session = world.maker()
        if lost["armed"]:
            lost["armed"] = False
            commit = session.commit

            def commit_then_lose_reply() -> None:
                commit()
                raise OperationalError("COMMIT", {}, ConnectionResetError("connection reset"))

            session.commit = commit_then_lose_reply  # type: ignore[method-assign]
        return session

    ctx = dataclasses.replace(
        world.ctx,
        sessionmaker=reply_lost_once,
        settings=world.settings.model_copy(update={"db_retry_s": 30.0}),
    )
    assert steps.start_job(ctx, job_id).finetune == TASKS
    assert not lost["armed"]  # the reply was lost once
    job = world.job(job_id)
    assert (job.status, job.attempts) == ("running", 1)
    _end(world, job_id)


def _end(world: World, job_id: str) -> None:
    """Cancel a job a test left running (the module's owner may have 4 active jobs at most)."""
    with world.maker() as session:
        repository.finish_job(session=session, job_id=job_id, status="cancelled")
        session.commit()


def test_a_stopping_worker_puts_its_job_back_without_counting_it(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    ctx = steps.StepContext(
        settings=world.settings,
        sessionmaker=world.maker,
        hostname="test@host",
        stop_requested=lambda: True,
    )
    with pytest.raises(steps.WorkerStopping):
        run_job_locally(ctx, job_id)
    job = world.job(job_id)
    assert (job.status, job.attempts) == ("queued", 0)


def test_a_step_rides_out_a_database_outage(world: World) -> None:
    """The sessions fail as if the server were down for a while, then work: the step's writes
    are retried and the job still succeeds, with every fine-tune stored once."""
    job_id = submit_job(world.client, world.key)
    failures = {"left": 0}

    def flaky() -> Session:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OperationalError("connect", {}, ConnectionRefusedError("server restarting"))
        return world.maker()

    ctx = dataclasses.replace(
        world.ctx,
        sessionmaker=flaky,
        settings=world.settings.model_copy(update={"db_retry_s": 30.0}),
    )
    failures["left"] = 3
    outcome = steps.start_job(ctx, job_id)
    for task in outcome.finetune:
        failures["left"] = 3
        if steps.finetune(ctx, job_id, task):
            failures["left"] = 3
            steps.analyze(ctx, job_id)
    assert world.job(job_id).status == "succeeded"
    assert world.count(TaskResult, job_id) == len(TASKS)


def test_an_outage_longer_than_the_retries_leaves_the_job_to_the_sweep(world: World) -> None:
    job_id = submit_job(world.client, world.key)
    outcome = steps.start_job(world.ctx, job_id)

    def down() -> Session:
        raise OperationalError("connect", {}, ConnectionRefusedError("server down"))

    ctx = dataclasses.replace(
        world.ctx,
        sessionmaker=down,
        settings=world.settings.model_copy(update={"db_retry_s": 0.0}),
    )
    assert steps.finetune(ctx, job_id, outcome.finetune[0]) is False
    job = world.job(job_id)
    assert job.status == "running" and job.error is None  # not failed: the sweep restarts it
