"""Tests for bench/bench_planted.py: the plan's order, the Wilson interval, the summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_planted as bp


def _prereg(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    spec = {"levels": ["low", "mid"], "task_counts": [3, 4], "rows": 400, "seeds": [7, 8]}
    path.write_text(json.dumps(spec))
    return path


def test_the_plan_is_seed_major_so_every_prefix_is_balanced(tmp_path: Path) -> None:
    runs = bp.plan(_prereg(tmp_path))
    assert [r["name"] for r in runs[:4]] == [
        "sweep-low-t3-400-s7",
        "sweep-low-t4-400-s7",
        "sweep-mid-t3-400-s7",
        "sweep-mid-t4-400-s7",
    ]
    assert len(runs) == 8 and {r["seed"] for r in runs[4:]} == {8}
    case = bp.case_of(runs[1])
    frame, tasks, planted = case.load()
    assert len(frame) == 400 and len(tasks) == 4
    assert planted is not None and sorted(map(len, planted)) == [1, 1, 2]


def test_the_committed_plan_reads() -> None:
    """The plan in bench/results is the one the sweep runs: 40 runs, four cells of ten."""
    runs = bp.plan(Path(__file__).resolve().parents[1] / bp.PREREG)
    assert len(runs) == 40 and len({r["name"] for r in runs}) == 40
    cells = {(r["level"], r["tasks"]) for r in runs}
    assert cells == {("low", 3), ("low", 4), ("mid", 3), ("mid", 4)}
    assert all(sum((r["level"], r["tasks"]) == c for r in runs) == 10 for c in cells)


def test_queues_take_whole_seeds(tmp_path: Path) -> None:
    runs = bp.plan(_prereg(tmp_path))
    first, second = bp.queue_of(runs, "0/2"), bp.queue_of(runs, "1/2")
    assert {r["seed"] for r in first} == {7} and {r["seed"] for r in second} == {8}
    assert len(first) == len(second) == 4  # every cell of its seed
    assert bp.queue_of(runs, "0/1") == runs
    for bad in ("2/2", "0/0", "x", "1"):
        with pytest.raises(ValueError, match="--every"):
            bp.queue_of(runs, bad)


def test_wilson_interval() -> None:
    assert bp.wilson(0, 0) == (0.0, 1.0)
    low, high = bp.wilson(10, 10)
    assert high == 1.0 and low == pytest.approx(0.722, abs=1e-3)  # the known 10/10 bound
    low, high = bp.wilson(8, 10)
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943, abs=1e-3)


@given(st.integers(0, 200), st.integers(1, 200))
def test_wilson_interval_holds_the_proportion(k: int, n: int) -> None:
    k = min(k, n)
    low, high = bp.wilson(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_summary_counts_recoveries_misses_and_runs_not_yet_measured(tmp_path: Path) -> None:
    runs = bp.plan(_prereg(tmp_path))
    planted = [["a", "b"], ["c"]]
    results = {
        runs[0]["name"]: {"planted": planted, "recommended": [["b", "a"], ["c"]]},
        runs[4]["name"]: {"planted": planted, "recommended": [["a", "b", "c"]]},
        runs[2]["name"]: {"planted": planted, "recommended": planted},
    }
    cells = bp.summarise(runs, results)
    assert cells["low-t3"]["recovered"] == 1 and cells["low-t3"]["runs"] == 2
    assert cells["low-t3"]["misses"] == [
        {"name": runs[4]["name"], "recommended": [["a", "b", "c"]]}
    ]
    assert cells["mid-t3"]["runs"] == 1 and cells["mid-t3"]["missing"] == [runs[6]["name"]]
    assert cells["low-t4"]["runs"] == 0 and cells["low-t4"]["interval_95"] == [0.0, 1.0]
    assert bp.same_partition([["b", "a"], ["c"]], planted)
    assert not bp.same_partition([["a"], ["b"], ["c"]], planted)


def _pair(a: str, b: str, partial: float, layer: int | None, cosine: float) -> dict[str, object]:
    return {
        "tasks": [a, b],
        "rep_measure": "partial_cka",
        "partial_cka_min": partial,
        "partial_cka_min_layer": layer,
        "grad_cosine": cosine,
        "conflict_rate": 0.2,
    }


def test_regroup_recomputes_the_grouping_from_stored_evidence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = {
        "planted": [["a", "b"], ["c"]],
        "thresholds": {"tau_rep": 0.0, "tau_grad": -0.275, "rho": 0.9},
        "pairs": [
            _pair("a", "b", 0.6, 5, 0.05),
            _pair("a", "c", -0.2, 6, 0.0),
            _pair("b", "c", -0.1, 6, 0.0),
        ],
        "recommended": [["a", "b"], ["c"]],
    }
    grouping = bp.regroup(result, "shipped")
    assert grouping is not None and bp.same_partition(grouping, [["a", "b"], ["c"]])
    assert bp.not_reproduced({"r": result}) == []
    assert bp.not_reproduced({"r": {**result, "recommended": [["a"], ["b"], ["c"]]}}) == ["r"]
    # A run stored with the reduced pair keys of the first sweep cannot be read again.
    reduced = {**result, "pairs": [{"tasks": p["tasks"]} for p in result["pairs"]]}
    assert bp.regroup(reduced, "shipped") is None
    # Another rule is recomputed from the evidence; a run it cannot read is counted, not judged.
    monkeypatch.setitem(bp.RULES, "again", bp.grp.PairEvidence)
    runs = [{"name": n, "level": "mid", "tasks": 3} for n in ("r", "s")]
    cells = bp.summarise(runs, {"r": result, "s": reduced}, rule="again")
    assert cells["mid-t3"]["recovered"] == 1 and cells["mid-t3"]["runs"] == 1
    assert cells["mid-t3"]["unjudged"] == 1


def test_raw_fallback_reads_the_raw_cka_where_no_layer_was_read() -> None:
    """Two unread pairs (partial CKA 1.0 on both, the triple refused by a read pair): shipped
    breaks the tie on the gradient cosine, raw_fallback on the raw min CKA."""
    pairs = [
        {**_pair("a", "b", 1.0, None, -0.02), "cka_min": 0.64},
        {**_pair("a", "c", -0.15, 6, -0.01), "cka_min": 0.13},
        {**_pair("b", "c", 1.0, None, 0.02), "cka_min": 0.18},
    ]
    result = {
        "planted": [["a", "b"], ["c"]],
        "thresholds": {"tau_rep": 0.0, "tau_grad": -0.275, "rho": 0.9},
        "pairs": pairs,
        "recommended": [["a"], ["b", "c"]],
    }
    assert bp.same_partition(bp.regroup(result, "shipped") or [], [["a"], ["b", "c"]])
    assert bp.same_partition(bp.regroup(result, "raw_fallback") or [], [["a", "b"], ["c"]])
    evidence = bp.RULES["raw_fallback"].from_report(pairs[0])
    assert evidence.cka_judged == 1.0  # the verdict reads the partial CKA as shipped
    assert evidence.affinity == pytest.approx(0.5 * 0.64 + 0.5 * -0.02)
    read = bp.RULES["raw_fallback"].from_report(pairs[1])
    before = bp.RULES["shipped"].from_report(pairs[0])
    assert before.affinity == pytest.approx(0.5 * 1.0 + 0.5 * -0.02)
    assert read.affinity == pytest.approx(0.5 * -0.15 + 0.5 * -0.01)
    runs = [{"name": "r", "level": "mid", "tasks": 3}]
    out = bp.compare_rules(runs, {"r": result}, "shipped", "raw_fallback")
    assert (out["wins"], out["losses"], out["losses_by_level"]) == (1, 0, {"mid": 0})
    assert out["differ"][0]["name"] == "r" and out["differ"][0]["other_recovers"]


def test_a_threshold_rule_regroups_on_its_own_thresholds() -> None:
    """``tau_rep_0.05`` replaces the run's stored tau_rep: an unrelated pair whose partial CKA is
    just over 0 (0.03) merges under the stored 0.0 and stays apart under 0.05; ``not_reproduced``
    checks the stored recommendation against the plan's base rule."""
    result = {
        "planted": [["a", "b"], ["c"], ["d"]],
        "thresholds": {"tau_rep": 0.0, "tau_grad": -0.275, "rho": 0.9},
        "pairs": [
            _pair("a", "b", 0.5, 5, 0.1),
            _pair("a", "c", -0.1, 6, 0.0),
            _pair("a", "d", -0.1, 6, 0.0),
            _pair("b", "c", -0.1, 6, 0.0),
            _pair("b", "d", -0.1, 6, 0.0),
            _pair("c", "d", 0.03, 6, 0.0),
        ],
        "recommended": [["a", "b"], ["c", "d"]],
    }
    assert bp.same_partition(bp.regroup(result, "raw_fallback") or [], [["a", "b"], ["c", "d"]])
    assert bp.same_partition(bp.regroup(result, "tau_rep_0.05") or [], result["planted"])
    assert bp.not_reproduced({"r": result}, "raw_fallback") == []
    assert bp.not_reproduced({"r": result}, "tau_rep_0.05") == ["r"]
    assert result["thresholds"]["tau_rep"] == 0.0  # the stored run is not changed
    runs = [{"name": "r", "level": "mid", "tasks": 4}]
    out = bp.compare_rules(runs, {"r": result}, "raw_fallback", "tau_rep_0.05")
    assert (out["wins"], out["losses"]) == (1, 0)
