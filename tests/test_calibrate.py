"""``taskgrouper calibrate``: p_match refitted from the verified jobs in the service's database,
stored, and used by the workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app import repository as repo
from app.cli import main
from app.db import make_engine, make_sessionmaker, upgrade
from app.settings import Settings, get_settings
from models.calibration import Calibration, load_default
from models.options import AnalysisConfig
from worker.pipeline_steps import StepContext, _calibrated


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    url = f"sqlite:///{tmp_path / 'calibrate.db'}"
    monkeypatch.setenv("TASKGROUPER_DATABASE_URL", url)
    monkeypatch.setenv("TASKGROUPER_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    upgrade(url)
    engine = make_engine(url)
    yield url, make_sessionmaker(engine)
    engine.dispose()
    get_settings.cache_clear()


def _pair(a: str, b: str, cka: float, grad: float) -> dict[str, Any]:
    return {
        "tasks": [a, b],
        "cka_min": cka,
        "cka_mean": cka,
        "grad_cosine": grad,
        "conflict_rate": 0.0,
    }


def _verified_job(
    session: Session,
    dataset_id: str,
    cka: float,
    matches: bool,
    learnt: bool | None = True,
    partial: float | None = None,
    recorded: bool = True,
) -> None:
    """A succeeded job whose recommendation verified its pair (a, b); ``partial``: the pair's
    partial CKA (default: its CKA), unless the job was stored before pairs recorded one
    (``recorded`` false)."""
    dataset = repo.create_dataset(
        session=session,
        owner="alice",
        filename=f"{dataset_id}.csv",
        format="csv",
        size_bytes=1,
        sha256="ab" * 32,
        row_count=10,
        columns=["text", "a", "b"],
        label_summary={},
        artifact_path="/x.csv",
    )
    job = repo.create_job(
        session=session,
        owner="alice",
        request={"datasets": [{"id": dataset_id}], "tasks": []},
        model="minilm-l6",
        request_hash="f" * 64,
        idempotency_key=None,
        dataset_ids=[dataset.id],
    )
    assert repo.finish_job(session=session, job_id=job.id, status="succeeded")
    body: dict[str, Any] = {
        "pairs": [
            {
                **_pair("a", "b", cka, 0.1),
                **({"partial_cka_min": cka if partial is None else partial} if recorded else {}),
            }
        ],
        "verification": [{"tasks": ["a", "b"], "matches": matches}],
    }
    if learnt is not None:  # None: stored before task reports said whether a model learnt
        body["tasks"] = [{"name": t, "stl": {"learnt": learnt or t == "a"}} for t in ("a", "b")]
    repo.save_recommendation(session=session, job_id=job.id, body=body)


def _fill(sessionmaker: Any, n: int, *, known: bool = True, recorded: bool = True) -> None:
    rng = np.random.default_rng(0)
    with sessionmaker() as session:
        for k in range(n):
            cka = float(rng.uniform(0, 1))
            learnt = k % 5 != 0 if known else None
            _verified_job(session, f"d{k % 3}", cka, cka >= 0.5, learnt=learnt, recorded=recorded)
        session.commit()


def test_calibrate_fits_stores_and_reports(
    db: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sessionmaker = db
    _fill(sessionmaker, 30)
    assert main(["calibrate", "--min-groups", "10"]) == 0
    out = capsys.readouterr().out
    assert "fitted p_match on 30 verified groups" in out
    assert "stored as calibration" in out
    with sessionmaker() as session:
        row = repo.latest_calibration(session=session)
        assert row is not None and row.n_groups == 30 and row.n_jobs == 30
        cal = Calibration.from_dict(row.body)
    assert cal.metrics["held_out"]["n_groups"] == 30
    # Every fifth job's task b learnt little: its group is left out of the learnt-groups scores.
    learnt = cal.metrics["held_out_learnt_groups"]
    assert learnt["n_groups"] == 24 and learnt["n_matching"] <= 24
    assert "groups whose every task's single-task model learnt (24 of 30)" in out
    strong = {"cka_min": 0.9, "cka_mean": 0.9, "grad_cosine": 0.1, "conflict_rate": 0.0}
    weak = {**strong, "cka_min": 0.1, "cka_mean": 0.1}
    assert cal.p_match({**strong, "n_tasks": 2}) > 0.5 > cal.p_match({**weak, "n_tasks": 2})


def test_calibrate_dry_run_stores_nothing(
    db: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sessionmaker = db
    _fill(sessionmaker, 12, known=False)
    assert main(["calibrate", "--min-groups", "5", "--dry-run", "--json"]) == 0
    with sessionmaker() as session:
        assert repo.latest_calibration(session=session) is None
    # Recommendations that do not say which models learnt: no learnt-groups scores.
    metrics = json.loads(capsys.readouterr().out)["calibration"]["metrics"]
    assert metrics["held_out"]["n_groups"] == 12
    assert "held_out_learnt_groups" not in metrics


def test_calibrate_fits_the_view_of_the_measure_in_force(
    db: tuple[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With rep_measure "partial_cka" the refit reads each pair's partial_cka_min; jobs stored
    before their pairs recorded it are left out, and the stored calibration names its view."""
    _, sessionmaker = db
    _fill(sessionmaker, 6, recorded=False)  # older jobs: no partial CKA recorded
    rng = np.random.default_rng(1)
    with sessionmaker() as session:
        for k in range(24):
            partial = float(rng.uniform(-0.5, 1.0))
            _verified_job(session, f"p{k % 3}", 0.9, partial >= 0.0, partial=partial)
        session.commit()
    monkeypatch.setenv("TASKGROUPER_REP_MEASURE", "partial_cka")
    get_settings.cache_clear()
    assert main(["calibrate", "--min-groups", "10"]) == 0
    out = capsys.readouterr().out
    assert "fitted p_match on 24 verified groups" in out and "partial_cka evidence" in out
    assert "left out 6 job(s)" in out
    assert main(["calibrate", "--min-groups", "100"]) == 2
    err = capsys.readouterr().err
    assert "in 30 job(s) (6 of them stored before their pairs recorded the partial_cka" in err
    with sessionmaker() as session:
        row = repo.latest_calibration(session=session)
        assert row is not None
        cal = Calibration.from_dict(row.body)
    assert cal.rep_measure == "partial_cka"
    moved_apart = {"cka_min": -0.4, "cka_mean": 0.9, "grad_cosine": 0.1, "conflict_rate": 0.0}
    together = {**moved_apart, "cka_min": 0.8}
    assert (
        cal.p_match({**together, "n_tasks": 2}) > 0.5 > cal.p_match({**moved_apart, "n_tasks": 2})
    )


def test_calibrate_refuses_too_little_data(
    db: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sessionmaker = db
    _fill(sessionmaker, 3)
    assert main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert "only 3 verified group(s) in 3 job(s), fewer than --min-groups 20" in err


def test_workers_use_the_newest_stored_calibration(db: tuple[str, Any]) -> None:
    url, sessionmaker = db
    ctx = StepContext(settings=Settings(database_url=url), sessionmaker=sessionmaker, hostname="t")
    base = AnalysisConfig()
    assert _calibrated(ctx, base).calibration == load_default()  # nothing stored: shipped one
    _fill(sessionmaker, 12)
    assert main(["calibrate", "--min-groups", "5"]) == 0
    with sessionmaker() as session:
        row = repo.latest_calibration(session=session)
        assert row is not None
    assert _calibrated(ctx, base).calibration == Calibration.from_dict(row.body)
