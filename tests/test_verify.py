"""Stage 5's comparison of a group's MTL models with the STL models (models.verify.compare_group):
the tolerance, the effect, and the per-seed differences that show a run which fell short."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.schema import Verification
from models.training import TokenizedTask
from models.verify import MTLResult, compare_group, decision_margin

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
    # The diverged seed leaves the mean one standard error inside the tolerance.
    assert "matches (predicted match: confirmed; margin +1.0 SE)" in text  # 1.0, not a toss
    assert "margin +1.0 SE" in page


def test_the_margin_is_in_standard_errors_of_the_difference() -> None:
    # Per-seed differences 0, 0, 0, 0, -0.6: SE 0.12, tolerance 2 SE, mean -0.12, so the mean sits
    # (-0.12 + 0.24) / 0.12 = 1 SE inside the "hurts" boundary.
    entry = _entry([0.8] * 5, [0.8, 0.8, 0.8, 0.8, 0.2])
    assert entry["margin_se"] == pytest.approx(1.0)
    assert Verification.model_validate(entry).margin_se == pytest.approx(1.0)
    # One seed and identical predictions: no spread to measure the margin by.
    assert _entry([0.8], [0.5])["margin_se"] is None
    assert decision_margin(-0.3, 0.01, 0.0) == -math.inf
    assert decision_margin(0.05, 0.01, 0.02) == pytest.approx(3.0)
    assert decision_margin(-0.01, 0.01, 0.0) == 0.0


def test_a_coin_toss_is_called_one_in_the_summary() -> None:
    from models.summary import render
    from tests.test_api_jobs import sample_recommendation

    # Mean -0.016 against a tolerance of 2 SE = 0.01625: inside it by 0.03 SE.
    entry = _entry([0.8] * 5, [0.8, 0.79, 0.76, 0.8, 0.77])
    data = sample_recommendation()
    data["verification"] = [{**entry, "tasks": ["sentiment", "topic"]}]
    text = render(data)
    assert "a coin toss: measure again with more seeds" in text
    assert entry["matches"] and 0 <= entry["margin_se"] < 1


def test_the_summary_shows_the_partial_cka_where_the_verdict_reads_it() -> None:
    from models.summary import render
    from tests.test_api_jobs import sample_recommendation

    data = sample_recommendation()
    assert "min-partial-CKA" not in render(data)
    for k, p in enumerate(data["pairs"]):
        layer = None if k else 2
        p.update(rep_measure="partial_cka", partial_cka_min=-0.13 if k == 0 else 1.0)
        p["partial_cka_min_layer"] = layer
    text = render(data)
    assert "Pairs:  min-partial-CKA (layer)  min-CKA (layer)" in text
    assert "-0.13 (L2)" in text


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).flatmap(
        lambda stl: st.tuples(
            st.just(stl), st.lists(st.floats(0.0, 1.0), min_size=len(stl), max_size=len(stl))
        )
    ),
    st.floats(0.0, 0.1),
)
def test_the_margin_has_the_sign_of_the_outcome(
    f1s: tuple[list[float], list[float]], tolerance: float
) -> None:
    stl, mtl = f1s
    # _entry's predictions are the same everywhere, so the bootstrap SE is 0: skip computing it.
    with patch("models.verify.bootstrap_se", return_value=0.0):
        entry = _entry(stl, mtl, tolerance=tolerance)
    margin = entry["margin_se"]
    if margin is not None:
        assert entry["matches"] == (margin >= 0)
