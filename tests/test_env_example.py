"""`.env.example` lists every setting with its default (README, "For operators: deploy and
configure"): each value it shows must be the one the service uses when the variable is unset, so
that uncommenting a line as shown changes nothing."""

import os
import re
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from models.grouping import default_thresholds

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
LINE = re.compile(r"^# TASKGROUPER_([A-Z0-9_]+)=('[^']*'|\S+)\s*(?:#\s*(.*))?$")
# Shown as an example value, not a default: the comment says what the default is instead.
EXAMPLES_ONLY = {
    "data_dir",
    "database_url",
    "artifact_dir",
    "broker_url",
    "models",
    "device",
    "task_soft_time_limit",
}


def shown() -> list[tuple[str, str]]:
    out = []
    for line in EXAMPLE.read_text().splitlines():
        if m := LINE.match(line):
            out.append((m.group(1).lower(), m.group(2).strip("'\"")))
    return out


def test_the_example_names_every_setting() -> None:
    named = {name for name, _ in shown()}
    assert set(Settings.model_fields) - named == set()
    assert named - set(Settings.model_fields) == set()  # no stale names


@pytest.mark.parametrize("name,value", [p for p in shown() if p[0] not in EXAMPLES_ONLY])
def test_each_value_shown_is_the_default(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file read
    for var in [k for k in os.environ if k.startswith("TASKGROUPER_")]:
        monkeypatch.delenv(var)
    default: Any = getattr(Settings(), name)
    if default is None and name in ("tau_rep", "tau_grad", "rho"):
        # Unset thresholds take the default measure's own (the example shows those).
        default = getattr(default_thresholds(Settings().rep_measure), name)
    monkeypatch.setenv(f"TASKGROUPER_{name.upper()}", value)
    assert getattr(Settings(), name) == default, f".env.example shows {name}={value}"
