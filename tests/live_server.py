"""A live embedded service for tests: ``taskgrouper serve`` in a subprocess (SQLite, the local
worker process), the tiny test model registered as ``tiny``, and one API key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.cli import _RUN_CLI, create_key_via_cli, free_port, wait_until_ready


@dataclass
class LiveServer:
    base: str
    key: str
    pid: int
    client: httpx.Client
    root: Path
    env: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_key(live: LiveServer, owner: str) -> str:
    """Another owner's API key (``taskgrouper keys create``)."""
    return create_key_via_cli(owner, env=live.env, cwd=live.root)


@contextmanager
def embedded_server(
    root: Path, model_dir: Path, owner: str = "alice", **settings: str
) -> Iterator[LiveServer]:
    """Serve in ``root`` until the block ends (SIGINT, then SIGKILL after 30 s). ``settings``
    are more TASKGROUPER_ variables (``max_upload_bytes="1000"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGROUPER_")}
    env.update(
        TASKGROUPER_DATA_DIR=str(root / "data"),
        TASKGROUPER_MODELS=json.dumps({"tiny": str(model_dir)}),
        OMP_NUM_THREADS="1",  # the tiny model runs faster on one thread
    )
    env.update({f"TASKGROUPER_{name.upper()}": value for name, value in settings.items()})
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _RUN_CLI, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_until_ready(server, client, 60)
            key = create_key_via_cli(owner, env=env, cwd=root)
            yield LiveServer(base, key, server.pid, client, root, env)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
