"""The client (``taskgrouper submit/show/cancel/report`` and :class:`app.client.ServiceClient`)
against a live embedded server running jobs with the tiny model."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import _RUN_CLI
from app.client import ProgressBar, ServiceClient, ServiceError
from models.synth import SynthSpec, write
from tests.live_server import LiveServer, embedded_server

pytestmark = pytest.mark.slow

TASKS = "product,product_flag,severity"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Iterator[LiveServer]:
    with embedded_server(tmp_path_factory.mktemp("live"), tiny_bert) as server:
        yield server


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tickets.csv"
    write(SynthSpec(rows=200, features=(2, 1), seed=4), path)
    return path


def cli(live: LiveServer, *args: str, key: str | None = None, cwd: Path | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGROUPER_")}
    env["TASKGROUPER_SERVER"] = live.base
    env["TASKGROUPER_KEY"] = live.key if key is None else key
    return subprocess.run(
        [sys.executable, "-c", _RUN_CLI, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


TRAINING = ("--model", "tiny", "--epochs", "1", "--lr", "1e-3", "--max-length", "32")


def test_submit_follows_progress_and_prints_the_summary(
    live: LiveServer, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rec.json"
    done = cli(
        live,
        "submit",
        str(data),
        "--text-column",
        "text",
        "--tasks",
        TASKS,
        *TRAINING,
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    # Progress (not a terminal: one line per stage and 5 percent) ends at 100% succeeded.
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("[")]
    assert lines and lines[-1].startswith("[100%] succeeded")
    parsed = [re.match(r"\[\s*(\d+)%\] (\w+)", ln) for ln in lines]
    percents = [int(m.group(1)) for m in parsed if m]
    assert len(percents) == len(lines) and percents == sorted(percents)
    assert percents[0] < 100 and parsed[0] and parsed[0].group(2) in ("queued", "running")
    assert "Recommended grouping" in done.stdout or "model" in done.stdout
    rec = json.loads(out.read_text())
    assert [t["name"] for t in rec["tasks"]] == TASKS.split(",")
    job_id = done.stderr.split("job ")[1].split()[0]
    assert f"/recommendations/{job_id}/report" in done.stdout

    shown = cli(live, "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}: succeeded, stage done, 100%" in shown.stdout
    as_json = cli(live, "show", job_id, "--json")
    assert json.loads(as_json.stdout)["grouping"] == rec["grouping"]

    report = tmp_path / "report.html"
    written = cli(live, "report", job_id, "--out", str(report))
    assert written.returncode == 0, written.stderr
    html = report.read_text()
    assert "<style>" in html and "/ui/static/" not in html  # self-contained
    assert html.count('class="pair-cell') == 2 * 3  # two heatmaps, three pairs
    for task in TASKS.split(","):
        assert task in html


def test_cancel_a_running_job(live: LiveServer, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    write(SynthSpec(rows=3000, features=(2, 1), seed=5), big)
    submitted = cli(
        live,
        "submit",
        str(big),
        "--text-column",
        "text",
        "--tasks",
        TASKS,
        "--model",
        "tiny",
        "--epochs",
        "8",
        "--max-length",
        "64",
        "--no-wait",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    with ServiceClient(live.base, live.key) as client:
        seen: list[dict[str, Any]] = []

        def started(job: dict[str, Any]) -> None:
            seen.append(job)
            if job["status"] == "running" and job["progress"] > 0:
                raise StopIteration  # leave follow() once it is training

        with pytest.raises(StopIteration):
            client.follow(job_id, started, poll_s=0.2, timeout_s=120)
        cancelled = cli(live, "cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert job_id in cancelled.stdout
        final = client.follow(job_id, poll_s=0.5, timeout_s=120)
    assert final["status"] == "cancelled"
    assert [j["status"] for j in seen][-1] == "running"
    shown = cli(live, "show", job_id)
    assert f"job {job_id}: cancelled" in shown.stdout
    again = cli(live, "cancel", job_id)
    assert again.returncode == 2 and "HTTP 409" in again.stderr
    assert "already cancelled" in again.stderr
    no_report = cli(live, "report", job_id, cwd=tmp_path)
    assert no_report.returncode == 2 and "HTTP 409" in no_report.stderr
    assert "cancelled" in no_report.stderr


def test_client_errors_name_the_problem(live: LiveServer, data: Path) -> None:
    with ServiceClient(live.base, live.key) as client:
        uploads = len(client._call("GET", "/datasets", params={"limit": 100}).json()["data"])
    unknown = cli(
        live, "submit", str(data), "--text-column", "text", "--tasks", "product,nope", *TRAINING
    )
    assert unknown.returncode == 2
    assert "HTTP 422" in unknown.stderr and "nope" in unknown.stderr
    assert "removed the upload" in unknown.stderr  # a refused job leaves no dataset behind
    not_finite = cli(
        live, "submit", str(data), "--text-column", "text", "--tasks", TASKS, "--lr", "nan"
    )
    assert not_finite.returncode == 2 and "--lr: must be a finite number" in not_finite.stderr
    with ServiceClient(live.base, live.key) as client:
        assert (
            len(client._call("GET", "/datasets", params={"limit": 100}).json()["data"]) == uploads
        )
    # A key copied with its newline still works; one with control characters is refused unechoed.
    newline = cli(live, "show", "00000000-0000-4000-8000-000000000000", key=live.key + "\n")
    assert newline.returncode == 2 and "HTTP 404" in newline.stderr
    control = cli(live, "show", "x", key="tg_secret\x01")
    assert control.returncode == 2 and "--key" in control.stderr
    assert "tg_secret" not in control.stderr
    empty_id = cli(live, "show", "  ")
    assert empty_id.returncode == 2 and "job id is empty" in empty_id.stderr
    folder = cli(live, "submit", str(data), "--text-column", "text", "--tasks", TASKS, "--out", "/")
    assert folder.returncode == 2 and "--out: / is a folder" in folder.stderr
    assert "uploaded" not in folder.stderr
    bad_server = cli(live, "show", "x", "--server", "http://[::1")
    assert bad_server.returncode == 2 and "--server" in bad_server.stderr
    assert "Traceback" not in bad_server.stderr
    bad_key = cli(live, "show", "00000000-0000-4000-8000-000000000000", key="tg_wrong")
    assert bad_key.returncode == 2 and "HTTP 401" in bad_key.stderr
    missing = cli(live, "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
    no_file = cli(live, "submit", "/nonexistent.csv", "--text-column", "t", "--tasks", "a,b")
    assert no_file.returncode == 2 and "no such file" in no_file.stderr
    no_key = cli(live, "show", "x", key="")
    assert no_key.returncode == 2 and "--key" in no_key.stderr
    with pytest.raises(ServiceError) as unreachable:
        ServiceClient("http://127.0.0.1:9", live.key, timeout=2).job("x")
    assert unreachable.value.status is None and "cannot reach" in unreachable.value.message


def test_progress_bar_on_a_terminal_and_in_a_log() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(tty)
    bar({"status": "running", "stage": "finetune", "progress": 0.5})
    bar({"status": "succeeded", "stage": "done", "progress": 1.0})
    assert "\r[" + "#" * 15 + "-" * 15 + "]  50% running   finetune" in tty.getvalue()
    assert tty.getvalue().endswith("\n")

    log = io.StringIO()
    bar = ProgressBar(log)
    for pct in (0.0, 0.01, 0.02, 0.06, 0.07):
        bar({"status": "running", "stage": "finetune", "progress": pct})
    bar({"status": "succeeded", "stage": "done", "progress": 1.0})
    assert log.getvalue().splitlines() == [
        "[  0%] running   finetune",
        "[  6%] running   finetune",
        "[100%] succeeded done",
    ]
