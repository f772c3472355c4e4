"""Stage 5's comparison of a group's MTL models with the STL models (models.verify.compare_group):
the tolerance, the effect, and the per-seed differences that show a run which fell short."""

from __future__ import annotations

import numpy as np
import pytest

from models.schema import Verification
from models.training import TokenizedTask
from models.verify import MTLResult, compare_group

LABELS = np.array([0, 1] * 20)


def _task() -> TokenizedTask:
    ids = [[1, 2]] * len(LABELS)
    return TokenizedTask(ids, LABELS, ids, LABELS, 2)


def _entry(stl_f1: list[float], mtl_f1: list[float], tolerance: float = 0.01) -> dict:
    """Task "a" alone in the group's comparison; the same predictions everywhere, so the
    bootstrap noise is 0 and the seeds decide the tolerance."""
    preds = LABELS.tolist()
    stl = {"a": [(f, preds) for f in stl_f1]}
    mtl = [
        MTLResult(["a"], {"a": f}, {"a": f}, {"a": preds}, steps=10, seconds=1.0, seed=s)
        for s, f in enumerate(mtl_f1)
    ]
    return compare_group(["a"], {"a": _task()}, stl, mtl, tolerance=tolerance, predicted=True)


def test_one_diverged_seed_widens_the_tolerance_and_shows_in_the_seed_deltas() -> None:
    entry = _entry([0.8] * 5, [0.8, 0.8, 0.8, 0.8, 0.2])
    task = entry["per_task"][0]
    assert task["seed_deltas"] == pytest.approx([0.0, 0.0, 0.0, 0.0, -0.6])
    # Twice the standard error of the per-seed differences: wide enough to hold the mean (-0.12).
    assert task["tolerance"] == pytest.approx(2 * np.std([0, 0, 0, 0, -0.6], ddof=1) / np.sqrt(5))
    assert task["delta"] == pytest.approx(-0.12)
    assert task["effect"] == "neutral" and entry["matches"]
    Verification.model_validate(entry)


def test_seed_deltas_follow_the_seeds() -> None:
    entry = _entry([0.8, 0.82, 0.79], [0.81, 0.8, 0.8])
    assert entry["seeds"] == [0, 1, 2]
    assert entry["per_task"][0]["seed_deltas"] == pytest.approx([0.01, -0.02, 0.01])
    assert entry["noise_method"] == "seeds"


def test_one_seed_uses_the_bootstrap() -> None:
    entry = _entry([0.8], [0.5])
    assert entry["noise_method"] == "bootstrap"
    assert entry["per_task"][0]["effect"] == "hurts" and not entry["matches"]
    assert entry["per_task"][0]["seed_deltas"] == pytest.approx([-0.3])


def test_stored_verifications_without_seed_deltas_still_load() -> None:
    entry = _entry([0.8] * 2, [0.8, 0.8])
    del entry["per_task"][0]["seed_deltas"]
    assert Verification.model_validate(entry).per_task[0].seed_deltas is None


def test_the_summary_and_the_report_show_the_per_seed_differences() -> None:
    from app.pages import standalone_report
    from models.schema import Recommendation
    from models.summary import render
    from tests.test_api_jobs import sample_recommendation

    entry = _entry([0.8] * 5, [0.8, 0.8, 0.8, 0.8, 0.2])
    entry["tasks"] = ["sentiment", "topic"]
    entry["per_task"] = [
        {**entry["per_task"][0], "task": "sentiment"},
        {**entry["per_task"][0], "task": "topic", "seed_deltas": None},
    ]
    data = sample_recommendation()
    data["verification"] = [entry]
    rec = Recommendation.model_validate(data)
    text = render(rec.model_dump())
    assert "per seed: +0.0 +0.0 +0.0 +0.0 -60.0" in text
    assert text.count("per seed:") == 1  # topic has none recorded
    page = standalone_report(rec, "job-1", server="http://localhost")
    assert "per seed: +0.000 +0.000 +0.000 +0.000 -0.600" in page
