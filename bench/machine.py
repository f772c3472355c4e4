"""What every benchmark reports about the machine it ran on."""

from __future__ import annotations

import os
import platform
import signal
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(*packages: str) -> dict[str, Any]:
    """Cores, CPU, platform, Python and the versions of ``packages`` (None when missing)."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for name in packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that a benchmark's ``finally`` blocks stop the
    servers and workers it started."""

    def terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
