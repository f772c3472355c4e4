"""Real Celery workers for tests: the Redis broker and PostgreSQL database fixtures (registered
in conftest), and starting, waiting for and stopping worker processes.

When Redis is unreachable a test that needs it is skipped, or fails under ``CI`` (CI must not go
green by skipping the integration tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import upgrade
from tests.db_fixtures import fresh_postgres_database

REPO_ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("TASKGROUPER_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
TERMINAL = ("succeeded", "failed", "cancelled")


def redis_or_skip() -> Any:
    import redis

    client = redis.Redis.from_url(BROKER_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis is not reachable at {BROKER_URL} ({exc}); start redis-server"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return client


@pytest.fixture
def broker() -> Iterator[str]:
    client = redis_or_skip()
    client.flushdb()
    yield BROKER_URL
    client.flushdb()
    client.close()


@pytest.fixture
def worker_db() -> Iterator[str]:
    """A committed, migrated PostgreSQL database that the worker processes share."""
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


def start_worker(
    name: str, env: dict[str, str], log: Path, *, beat: bool = False
) -> subprocess.Popen[bytes]:
    """A worker process (``--pool=solo``, both queues) logging to ``log``; ``beat`` embeds
    celery beat (the sweep)."""
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo"]
    argv += ["-Q", "gpu,celery", "-n", f"{name}@%h", "--loglevel=INFO", "--without-gossip"]
    argv += ["--without-mingle", "--without-heartbeat"]
    if beat:
        argv += ["-B", "-s", str(log.with_suffix(".beat"))]
    with log.open("wb") as handle:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=handle, stderr=handle)


def wait_ready(workers: list[subprocess.Popen[bytes]], logs: list[Path], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in zip(workers, logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(f"worker exited:\n{log.read_text()[-3000:]}")
        if all(" ready." in log.read_text() for log in logs):
            return
        time.sleep(0.3)
    raise AssertionError("workers not ready:\n" + "\n".join(p.read_text()[-2000:] for p in logs))


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: warm shutdown
    for proc in workers:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
