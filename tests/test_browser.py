"""The report page and the jobs page in headless Chromium (Debian's ``chromium``, driven by
Playwright), against a live embedded service that ran a real job with the tiny model.

``make test`` installs Chromium (``make browser``); without it these tests fail and say so, so
that CI can never pass them by skipping. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.report import verdict_sentence
from models.schema import Recommendation
from models.synth import SynthSpec, write
from tests.live_server import LiveServer, embedded_server

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TASKS = ["product", "product_flag", "severity", "channel"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Iterator[LiveServer]:
    with embedded_server(tmp_path_factory.mktemp("live"), tiny_bert) as server:
        yield server


def upload(live: LiveServer, root: Path, rows: int, seed: int = 2) -> str:
    data = root / f"tickets-{rows}.csv"
    write(SynthSpec(rows=rows, features=(2, 1, 1), seed=seed), data)
    up = live.client.post(
        "/datasets", files={"file": (data.name, data.read_bytes())}, headers=live.auth
    )
    assert up.status_code == 201, up.text
    return str(up.json()["id"])


def submit(live: LiveServer, dataset_id: str, **overrides: Any) -> str:
    body: dict[str, Any] = {
        "dataset_id": dataset_id,
        "text_column": "text",
        "tasks": TASKS,
        "model": "tiny",
        "training": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        "candidate_task_sets": [[["product", "product_flag"], ["severity"], ["channel"]]],
        "verify": True,
    }
    body.update(overrides)
    submitted = live.client.post("/jobs", json=body, headers=live.auth)
    assert submitted.status_code == 202, submitted.text
    return str(submitted.json()["id"])


def wait_for(live: LiveServer, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = live.client.get(f"/jobs/{job_id}", headers=live.auth).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        assert time.monotonic() < deadline, f"job still {job['status']} ({job['stage']})"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def finished(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job that has succeeded, with verification."""
    job_id = submit(live, upload(live, tmp_path_factory.mktemp("data"), rows=240))
    job = wait_for(live, job_id)
    assert job["status"] == "succeeded", job["error"]
    return job_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make browser` (Debian chromium)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def sign_in(self, live: LiveServer, path: str) -> Any:
        """Open ``path``: the sign-in form comes first; the key, once, brings the page."""
        response = self.page.goto(live.base + path)
        assert response.status == 200 and "/ui/login?next=" in self.page.url
        assert self.page.locator("input[name=key]").count() == 1
        self.page.fill("input[name=key]", live.key)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")
        return self.page


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    opened = Page(browser)
    yield opened
    opened.context.close()


def test_the_report_page_of_a_finished_job(live: LiveServer, finished: str, page: Page) -> None:
    rec = Recommendation.model_validate(
        live.client.get(f"/recommendations/{finished}", headers=live.auth).json()
    )
    p = page.sign_in(live, f"/recommendations/{finished}/report")
    assert p.url.endswith(f"/recommendations/{finished}/report")
    ARTIFACTS.mkdir(exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

    assert page.errors == []
    assert p.locator("#verdict").inner_text().strip() == verdict_sentence(rec)
    text = p.locator("body").inner_text()
    for task in TASKS:
        assert task in text
    expected = {frozenset(pair) for pair in itertools.combinations(TASKS, 2)}
    for metric in ("cka", "grad"):
        cells = p.locator(f"#heatmap-{metric} rect.pair-cell")
        assert cells.count() == len(expected)  # one cell per task pair
        seen = {
            frozenset((cells.nth(i).get_attribute("data-a"), cells.nth(i).get_attribute("data-b")))
            for i in range(cells.count())
        }
        assert seen == expected
        borders = p.locator(f"#heatmap-{metric} polygon.group-border")
        assert borders.count() == len(rec.grouping)
    # One CKA curve per pair, the limiting layer marked on each that has one (a partial CKA no
    # layer of which counts has none: its curve says "no layer read").
    assert p.locator("svg.cka-curve").count() == len(expected)
    limited = sum(
        pair.rep_measure != "partial_cka" or pair.partial_cka_min_layer is not None
        for pair in rec.pairs
    )
    assert p.locator("svg.cka-curve circle.limiting").count() == limited
    assert p.locator("svg.cka-curve text.unread").count() == len(expected) - limited
    # Per-task STL metrics, the candidate set, the verification deltas.
    assert p.locator("table.tasks tr.task").count() == len(TASKS)
    assert p.locator("table.candidates tr.candidate").count() == 1
    assert rec.verification is not None
    assert p.locator("table.verification tr.verified").count() == sum(
        len(v.per_task) for v in rec.verification
    )

    # The downloads work with the browser session's cookie.
    downloaded = p.request.get(f"{live.base}/recommendations/{finished}/download")
    assert downloaded.status == 200 and downloaded.json()["grouping"] == rec.grouping
    svg = p.request.get(f"{live.base}/recommendations/{finished}/heatmaps/cka.svg")
    assert svg.status == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text().count('class="pair-cell') == len(expected)


def test_the_jobs_page_follows_a_running_job(
    live: LiveServer, finished: str, page: Page, tmp_path: Path
) -> None:
    # Enough work for the tiny model that the job runs for a while.
    dataset_id = upload(live, tmp_path, rows=4000, seed=3)
    job_id = submit(
        live,
        dataset_id,
        training={"epochs": 6, "lr": 1e-3, "batch_size": 16, "max_length": 64},
        candidate_task_sets=None,
        verify=False,
    )
    p = page.sign_in(live, "/ui/jobs")
    assert p.url.endswith("/ui/jobs")
    row = p.locator(f'tr.job[data-id="{job_id}"]')
    assert row.count() == 1
    assert p.locator(f'tr.job[data-id="{finished}"] td.link a').count() == 1  # its report

    # Without a reload, the page's progress advances while the job trains.
    first = float(row.get_attribute("data-progress") or 0)
    p.wait_for_function(
        "([id, first]) => { const r = document.querySelector(`tr.job[data-id='${id}']`);"
        " return r.dataset.status === 'running' && parseFloat(r.dataset.progress) > first; }",
        arg=[job_id, first],
        timeout=120_000,
    )
    later, bar = row.evaluate(
        "r => [parseFloat(r.dataset.progress), r.querySelector('progress').value]"
    )
    assert later > first
    assert bar == pytest.approx(later, abs=1e-4)  # the bar shows what the row holds
    ARTIFACTS.mkdir(exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)

    cancelled = live.client.post(f"/jobs/{job_id}/cancel", headers=live.auth)
    assert cancelled.status_code == 200, cancelled.text
    p.wait_for_function(
        "id => document.querySelector(`tr.job[data-id='${id}']`).dataset.status === 'cancelled'",
        arg=job_id,
        timeout=120_000,
    )
    assert row.locator(".badge").inner_text() == "cancelled"
    assert page.errors == []


def test_pages_without_a_valid_key(live: LiveServer, finished: str, page: Page) -> None:
    p = page.page
    p.goto(f"{live.base}/recommendations/{finished}/report")
    assert "/ui/login?next=" in p.url
    p.fill("input[name=key]", "tg_not-a-key")
    with p.expect_navigation():
        p.click("button[type=submit]")
    assert p.locator("p.error").inner_text() == "key: that API key is unknown or has been revoked"
    # Nothing of the report leaked onto the sign-in page.
    assert p.locator("svg.heatmap").count() == 0
    # The failed sign-in is a 401 (Chromium logs that load); nothing else went wrong.
    assert all("status of 401" in e for e in page.errors), page.errors
    # The API answers 401 (JSON) to a client that is not a browser.
    plain = live.client.get(f"/recommendations/{finished}/report")
    assert plain.status_code == 401 and plain.json()["error"]["status"] == 401
