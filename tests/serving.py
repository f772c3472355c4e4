"""Helpers for tests that run ``taskgrouper serve`` in a subprocess."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_until_ready(
    server: subprocess.Popen[bytes], client: httpx.Client, timeout_s: float
) -> None:
    """Poll ``/readyz`` until it answers 200; fail if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, "taskgrouper serve exited"
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "taskgrouper serve never became ready"
        time.sleep(0.3)
