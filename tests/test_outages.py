"""Outages of the services, with real processes: a private PostgreSQL and a private Redis (this
test's own servers, on their own ports, so that restarting them disturbs nothing else), the API
(``taskgrouper serve`` in Celery mode) and a Celery worker with beat.

* PostgreSQL stopped and started while a job runs: the API answers 503 with a JSON error during
  the outage and recovers by itself; the worker retries its writes and the job succeeds; no
  partial rows and no stray files.
* Redis restarted (it keeps nothing on disk) while one job runs and one is queued: both queue
  messages are gone; the sweep sends the jobs again and both succeed, no fine-tune run twice.

Needs root (PostgreSQL's ``initdb`` runs as the ``postgres`` user) and the Debian PostgreSQL and
Redis binaries; skipped without them, failed under ``CI``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.cli import free_port
from app.db import make_engine, upgrade
from app.tables import Dataset, Job, PairMetric, Recommendation
from tests.celery_fixtures import TERMINAL
from tests.db_fixtures import fresh_postgres_database
from tests.test_faults import SLOW, celery_service, poll, submit, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG_BIN = Path("/usr/lib/postgresql")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _pg_bin() -> Path:
    versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.is_dir() else []
    if not versions or os.geteuid() != 0 or shutil.which("runuser") is None:
        _unavailable("a private PostgreSQL needs root, runuser and Debian's PostgreSQL binaries")
    return versions[-1].parent


def _wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listening on port {port}")


class PrivatePostgres:
    def __init__(self, root: Path) -> None:
        self.bin = _pg_bin()
        del root  # pytest's tmp_path is private to root; the postgres user needs its own
        self.dir = Path(tempfile.mkdtemp(prefix="taskgrouper-pg-"))
        shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            "initdb",
            "-D",
            str(self.dir / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None:
            _unavailable("redis-server is not installed")
        self.port = free_port()
        self.dir = root / "redis"
        self.dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # keeps nothing: every queued message is gone
            self.proc.wait(10)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(tmp_path)
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(pg.dir, ignore_errors=True)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def rows(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.__tablename__: int(conn.scalar(select(func.count()).select_from(t)) or 0)
                for t in (Dataset, Job, PairMetric, Recommendation)
            }
    finally:
        engine.dispose()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_postgres_restarted_while_a_job_runs(
    postgres: PrivatePostgres, redis: PrivateRedis, tiny_bert: Path, tmp_path: Path
) -> None:
    upgrade(postgres.url)
    data_dir = tmp_path / "data"
    # A heartbeat timeout longer than the outage: the job must ride it out, not be restarted.
    env = worker_env(redis.url, postgres.url, data_dir, tiny_bert, heartbeat_timeout_s="60")
    with celery_service(env, tmp_path) as service:
        api, key = service.api, service.key
        auth = {"Authorization": f"Bearer {key}"}
        log = service.add_worker("w1", beat=True)
        job_id = submit(api, key, {**SLOW, "epochs": 15})
        poll(api, key, job_id, lambda j: j["status"] == "running" and j["progress"] > 0.05, 120)
        before_rows, before_files = rows(postgres.url), files(data_dir / "artifacts" / "uploads")

        postgres.stop()
        outage = time.monotonic()
        answers = {
            "job": api.client.get(f"/jobs/{job_id}", headers=auth),
            "list": api.client.get("/jobs", headers=auth),
            "ready": api.client.get("/readyz"),
            "upload": api.client.post(
                "/datasets", files={"file": ("t.csv", b"text,a\nx,1\ny,2\n")}, headers=auth
            ),
        }
        for name, answer in answers.items():
            assert answer.status_code == 503, (name, answer.text)
            body = answer.json()["error"]
            assert body["status"] == 503 and "not reachable" in body["message"], (name, body)
        assert answers["job"].headers["retry-after"] == "5"
        # The worker trains on, unable to write.
        time.sleep(max(0.0, 6 - (time.monotonic() - outage)))
        postgres.start()

        # The API recovers by itself: the pool replaces its dead connections.
        recovered = poll(api, key, job_id, lambda j: j["status"] in ("running", *TERMINAL), 30)
        assert recovered["status"] != "failed", recovered
        assert api.client.get("/readyz").status_code == 200
        job = poll(api, key, job_id, lambda j: j["status"] in TERMINAL, 300)
        assert job["status"] == "succeeded", f"{job}\n{log.read_text()[-3000:]}"
        assert job["attempts"] == 1
        # The outage reached the worker: its writes failed meanwhile, and it carried on. Which
        # write it met depends on the moment: a progress write mid-training (skipped), or the
        # result of a fine-tune that had just finished (retried until the database was back).
        worker_log = log.read_text()
        assert "progress not written" in worker_log or "database unreachable" in worker_log
        after_rows = rows(postgres.url)
        assert after_rows["datasets"] == before_rows["datasets"]  # the failed upload left nothing
        assert files(data_dir / "artifacts" / "uploads") == before_files
        assert after_rows["recommendations"] == 1 and after_rows["pair_metrics"] == 3


def test_redis_restarted_with_jobs_queued_and_running(
    redis: PrivateRedis, tiny_bert: Path, tmp_path: Path
) -> None:
    with fresh_postgres_database() as db:
        upgrade(db)
        env = worker_env(redis.url, db, tmp_path / "data", tiny_bert, requeue_after_s="3")
        with celery_service(env, tmp_path) as service:
            api, key = service.api, service.key
            log = service.add_worker("w1", beat=True)
            running = submit(api, key, {**SLOW, "epochs": 10})
            poll(api, key, running, lambda j: j["status"] == "running" and j["progress"] > 0, 120)
            queued = submit(api, key, {**SLOW, "epochs": 2})
            assert poll(api, key, queued, lambda j: True, 5)["status"] == "queued"

            redis.stop()  # every message is gone: the queued job's, the fine-tunes' waiting
            time.sleep(1)
            redis.start()

            for job_id in (running, queued):
                job = poll(api, key, job_id, lambda j: j["status"] in TERMINAL, 400)
                assert job["status"] == "succeeded", f"{job}\n{log.read_text()[-4000:]}"
            text = log.read_text()
            # No fine-tune ran twice: one "fine-tuned" line per job and task.
            done = re.findall(r"job (\S+): task '(\w+)' fine-tuned", text)
            assert sorted(done) == sorted(set(done)) and len(done) == 6, done
            assert "sweep: restarted" in text
