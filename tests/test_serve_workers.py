"""`taskgrouper serve` with several API processes (TASKGROUPER_API_WORKERS).

Several processes need the Celery broker; embedded mode refuses them (its local worker would be
started once per process). The served case needs Redis: skipped when it is unreachable, failed
under ``CI``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli import _RUN_CLI, create_key_via_cli, free_port, wait_until_ready

BROKER_URL = os.environ.get("TASKGROUPER_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGROUPER_")}
    env["TASKGROUPER_DATA_DIR"] = str(tmp_path / "data")
    env.update({f"TASKGROUPER_{k.upper()}": v for k, v in settings.items()})
    return env


def _children(pid: int) -> list[str]:
    """Command lines of the direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            if f"\nPPid:\t{pid}\n" in status:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def test_embedded_mode_refuses_several_api_processes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, "serve", "--port", str(free_port())],
        env=_env(tmp_path, api_workers="2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "TASKGROUPER_API_WORKERS=2 needs TASKGROUPER_BROKER_URL" in done.stderr


def test_two_api_processes_serve_with_the_broker(tmp_path: Path) -> None:
    import redis

    try:
        redis.Redis.from_url(BROKER_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        message = f"Redis is not reachable at {BROKER_URL} ({exc}); start redis-server"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = _env(tmp_path, api_workers="2", broker_url=BROKER_URL)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _RUN_CLI, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_until_ready(server, client, 90)
            workers = [c for c in _children(server.pid) if "spawn_main" in c]
            assert len(workers) == 2, _children(server.pid)
            key = create_key_via_cli("alice", env=env, cwd=tmp_path)
            auth = {"Authorization": f"Bearer {key}"}
            listed = client.get("/jobs", headers=auth)
            assert listed.status_code == 200, listed.text
            assert listed.json() == {"data": [], "next_cursor": None}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 0
