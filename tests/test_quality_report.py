"""The benchmark's scoring (bench/quality_report.py) on hand-built cases: regret against the best
partition, CKA relative to the seed floor, and the alternative threshold rule."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import quality_report as qr

TASKS = ["a", "b", "c"]


def _pair(a: str, b: str, curve: list[float]) -> dict[str, Any]:
    low = min(range(len(curve)), key=curve.__getitem__)
    return {
        "tasks": [a, b],
        "cka_per_layer": curve,
        "cka_min": curve[low],
        "cka_min_layer": low,
        "cka_mean": sum(curve) / len(curve),
        "grad_cosine": 0.05,
        "conflict_rate": 0.2,
    }


def _case(dataset: str, ab: float, ac: float, bc: float, floor: float = 1.0) -> dict[str, Any]:
    """Three tasks; a group matches exactly when its weakest pair's CKA is 0.5 or more. STL
    macro-F1 0.8 for every task; a matching group keeps it, a losing one costs 0.1 on each task."""
    curves = {("a", "b"): [1.0, ab], ("a", "c"): [1.0, ac], ("b", "c"): [1.0, bc]}
    pairs = [_pair(x, y, c) for (x, y), c in curves.items()]
    cka = {frozenset(k): v[1] for k, v in curves.items()}
    groups = []
    for size in (2, 3):
        for tasks in itertools.combinations(TASKS, size):
            weakest = min(cka[frozenset(p)] for p in itertools.combinations(tasks, 2))
            matches = weakest >= 0.5
            f1 = 0.8 if matches else 0.7
            groups.append(
                {
                    "tasks": list(tasks),
                    "matches": matches,
                    "mtl": {t: [f1, f1] for t in tasks},
                    "seeds": [0, 1],
                    "steps_per_seed": 100 * len(tasks),
                    "seconds": 20.0 * len(tasks),
                    "per_task": [
                        {
                            "task": t,
                            "delta": f1 - 0.8,
                            "tolerance": 0.02,
                            "stl_spread": 0.01,
                            "mtl_spread": 0.01,
                        }
                        for t in tasks
                    ],
                }
            )
    return {
        "case": dataset,
        "dataset": dataset,
        "model": "minilm-l6",
        "tasks": TASKS,
        "planted": None,
        "stl": {t: [0.8, 0.8] for t in TASKS},
        "groups": groups,
        "recommendation": {
            "pairs": pairs,
            "alignment": {"steps": 10, "samples": 2},
            "timings": {"finetune": 30.0, "similarity": 1.0, "alignment": 2.0, "grouping": 0.0},
        },
        "stl_steps": {t: 100 for t in TASKS},
        "training": {"batch_size": 32},
        "seeds": [0, 1],
        "group_mode": "all",
        "seed_cka": {t: [1.0, floor] for t in TASKS},
        "pair_cka": {f"{x}+{y}": c for (x, y), c in curves.items()},
        "complete": True,
    }


def test_best_partition_and_regret() -> None:
    case = _case("d", ab=0.9, ac=0.1, bc=0.1)
    best, score = qr.best_partition(case)
    # Every partition keeps 0.8 except those that group a losing pair.
    assert score == pytest.approx(0.8)
    assert all(len(g) == 1 or set(g) == {"a", "b"} for g in best)
    f1 = qr.group_f1(case)
    assert qr.partition_score([["a", "b", "c"]], f1) == pytest.approx(0.7)
    assert qr.partition_score([["a", "b"], ["c"]], f1) == pytest.approx(0.8)
    assert qr.partition_score([["a", "z"]], f1) is None  # not measured


def test_relative_cka_divides_by_the_seed_floor() -> None:
    case = _case("d", ab=0.3, ac=0.6, bc=0.4, floor=0.5)
    assert qr.relative_cka_min(case, ["a", "b"], relative=False) == pytest.approx(0.3)
    assert qr.relative_cka_min(case, ["a", "b"], relative=True) == pytest.approx(0.6)
    # The group's weakest pair over every layer: b+c at the last layer, 0.4 / 0.5.
    assert qr.relative_cka_min(case, ["a", "b", "c"], relative=True) == pytest.approx(0.6)
    assert qr.relative_cka_min(case, ["b", "c"], relative=True) == pytest.approx(0.8)
    uneven = _case("d", ab=0.3, ac=0.6, bc=0.4)
    uneven["seed_cka"] = {"a": [1.0, 0.25], "b": [1.0, 1.0], "c": [1.0, 1.0]}
    assert qr.relative_cka_min(uneven, ["a", "b"], relative=True) == pytest.approx(0.6)
    assert qr.relative_cka_min(uneven, ["b", "c"], relative=True) == pytest.approx(0.4)


def _cases() -> list[dict[str, Any]]:
    return [
        _case("d1", ab=0.9, ac=0.1, bc=0.2),
        _case("d2", ab=0.8, ac=0.7, bc=0.6),
        _case("d3", ab=0.2, ac=0.55, bc=0.15),
        _case("d4", ab=0.45, ac=0.95, bc=0.3),
    ]


def test_alternative_rule_scores_a_separable_benchmark() -> None:
    cases = _cases()
    obs = [o for c in cases for o in qr.case_observations(c)]
    best = qr.alternative_rule(cases, obs, "best")
    strict = qr.alternative_rule(cases, obs, "one_se")
    assert strict["rule"] == "one_se" and len(strict["fold_tau_rep"]) == 4
    # Separable at CKA 0.5 (losing groups up to 0.45, matching ones from 0.55): the default rule
    # keeps every fold's threshold between the classes it saw; the one-SE rule goes to the
    # strict side, above every losing group.
    assert all(0.3 < t <= 0.55 for t in best["fold_tau_rep"])
    assert all(t > 0.45 for t in strict["fold_tau_rep"])
    assert min(strict["fold_tau_rep"]) >= max(best["fold_tau_rep"])
    # Splitting never costs F1 here (a matching group only keeps it), so neither rule has regret.
    assert best["regret_max"] == 0.0 and strict["regret_max"] == 0.0
    assert strict["regret_cases"] == 4 and strict["planted_cases"] == 0
    assert best["balanced_accuracy_thresholds"] >= strict["balanced_accuracy_thresholds"] > 0.5


def test_seed_floor_comparison_reads_both_forms() -> None:
    cases = _cases()
    out = qr.seed_floor_comparison(cases)
    assert out is not None and out["cases"] == 4
    # A floor of 1 everywhere: the relative form is the raw one.
    assert out["raw"] == out["relative"]
    assert out["raw"]["n_groups"] == sum(len(c["groups"]) for c in cases)
    for c in cases:
        del c["seed_cka"]
    assert qr.seed_floor_comparison(cases) is None


def test_cost_counts_steps_against_brute_force_hoa_and_tag() -> None:
    out = qr.cost(_case("d", ab=0.9, ac=0.1, bc=0.2))
    # Stage 3: 10 warm-up steps x 3 tasks + 2 samples x 3 x (1 + 3/3), at batch 16 of 32.
    analysis = (10 * 3 + 2 * 3 * 2) * 16 / 32
    assert out["recommendation_steps"] == pytest.approx(300 + analysis)
    assert out["brute_force_steps"] == 4 * 300  # 2^(T-1) x the STL steps
    assert out["brute_force_steps_measured"] == 300 + 3 * 200 + 300
    assert out["ratio_hoa"] == pytest.approx((300 + analysis) / 900)
    assert out["ratio_tag"] == pytest.approx((300 + analysis) / 300)
    # Seconds: the fine-tunes plus each group's seconds per seed.
    assert out["brute_force_s"] == pytest.approx(30.0 + (3 * 40.0 + 60.0) / 2)


def test_outcome_margin_is_in_seed_standard_errors() -> None:
    case = _case("d", ab=0.9, ac=0.1, bc=0.2)
    entry = dict(case["groups"][0])  # a+b, matches at delta 0 with tolerance 0.02
    entry["mtl"] = {"a": [0.80, 0.82], "b": [0.80, 0.82]}
    # Per-seed differences 0.00 and 0.02: SE 0.01; margin (0 + 0.02) / 0.01 = 2.
    assert qr.outcome_margin(case, entry) == pytest.approx(2.0)
    entry["mtl"] = {"a": [0.8, 0.8], "b": [0.8, 0.8]}
    assert qr.outcome_margin(case, entry) == math.inf


def test_retest_ceiling_is_one_where_the_seeds_agree() -> None:
    # Every seed gives the same difference, far from the tolerance: a re-measurement always
    # agrees, so a predictor that knows it, and the measured outcomes, both score 1.
    out = qr.retest_ceiling(_cases(), replicates=200)
    assert out is not None
    assert out["groups"] == 16 and out["not_reproduced"] == 0
    assert out["ceiling"] == 1.0 and out["agreement"] == 1.0
    assert out["flip_rate"] == 0.0 and out["coin_tosses"] == 0


def _straddling(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` with a+b measured on five seeds whose differences straddle the tolerance: mean
    -0.015 against a tolerance max(0.01, 2 SD / sqrt(5)) = 0.0134, so it just loses."""
    entry = case["groups"][0]
    assert entry["tasks"] == ["a", "b"]
    diffs = [-0.030, 0.000, -0.030, 0.000, -0.015]
    case["stl"] = {t: [0.8] * 5 for t in TASKS}
    for g in case["groups"]:
        g["mtl"] = {t: [v[0]] * 5 for t, v in g["mtl"].items()}
    entry["mtl"] = {"a": [0.8 + d for d in diffs], "b": [0.8] * 5}
    sd = float(np.std(diffs, ddof=1))
    entry["per_task"][0]["tolerance"] = max(0.01, 2 * sd / math.sqrt(5))
    entry["per_task"][0]["delta"] = float(np.mean(diffs))
    entry["matches"] = float(np.mean(diffs)) >= -entry["per_task"][0]["tolerance"]
    return case


def test_retest_ceiling_counts_a_coin_toss() -> None:
    cases = _cases()
    _straddling(cases[1])
    assert cases[1]["groups"][0]["matches"] is False
    out = qr.retest_ceiling(cases, replicates=500)
    assert out is not None and out["not_reproduced"] == 0
    # One group of 16 now flips often; the others never do.
    assert out["coin_tosses"] == 1
    assert 0.0 < out["flip_rate"] <= 0.5 / 16
    assert out["ceiling"] < 1.0 and out["agreement"] < 1.0


def test_retest_ceiling_skips_what_it_cannot_reproduce() -> None:
    cases = _cases()
    cases[0]["groups"][0]["matches"] = not cases[0]["groups"][0]["matches"]
    out = qr.retest_ceiling(cases, replicates=50)
    assert out is not None and out["not_reproduced"] == 1 and out["groups"] == 15


@settings(max_examples=60, deadline=None)
@given(
    diffs=st.lists(st.lists(st.floats(-0.2, 0.2), min_size=5, max_size=5), min_size=2, max_size=3),
    fixed=st.floats(0.01, 0.05),
)
def test_retest_reproduces_the_verification_rule(diffs: list[list[float]], fixed: float) -> None:
    # A group decided as models.verify.compare_group decides it (tolerance max(fixed, 2 SD /
    # sqrt(n)) per task) is always reproduced, and the scores are proportions.
    tasks = TASKS[: len(diffs)]
    per_task, matches = [], True
    for t, d in zip(tasks, diffs, strict=True):
        tol = max(fixed, 2 * float(np.std(d, ddof=1)) / math.sqrt(5))
        matches = matches and float(np.mean(d)) >= -tol
        per_task.append({"task": t, "delta": float(np.mean(d)), "tolerance": tol})
    # STL at 0 so that the stored MTL values are the differences themselves, bit for bit.
    entry = {
        "tasks": tasks,
        "matches": matches,
        "mtl": {t: list(d) for t, d in zip(tasks, diffs, strict=True)},
        "per_task": per_task,
    }
    case = {"stl": {t: [0.0] * 5 for t in TASKS}, "groups": [entry]}
    out = qr.retest_ceiling([case], replicates=100)
    assert out is not None and out["not_reproduced"] == 0 and out["groups"] == 1
    assert 0.0 <= out["flip_rate"] <= 1.0


def _drifted(case: dict[str, Any], drift: dict[str, list[float]]) -> dict[str, Any]:
    case["recommendation"]["tasks"] = [{"name": t, "cka_to_pretrained": drift[t]} for t in TASKS]
    return case


def test_partial_cka_is_the_share_of_the_drift_two_models_share() -> None:
    # Two layers; at the second every model moved to CKA 0.6 from the pretrained encoder.
    drift = {t: [1.0, 0.6] for t in TASKS}
    case = _drifted(_case("d", ab=1.0, ac=0.36, bc=0.68), drift)
    # a+b moved together (CKA 1): 1. a+c moved independently (0.36 = 0.6 x 0.6): 0.
    assert qr.partial_cka_min(case, ["a", "b"], 0.2) == pytest.approx(1.0)
    assert qr.partial_cka_min(case, ["a", "c"], 0.2) == pytest.approx(0.0, abs=1e-9)
    assert qr.partial_cka_min(case, ["b", "c"], 0.2) == pytest.approx((0.68 - 0.36) / 0.64)
    assert qr.partial_cka_min(case, ["a", "b", "c"], 0.2) == pytest.approx(0.0, abs=1e-9)
    # No layer where both moved 0.5 or more: the models barely left the shared encoder.
    assert qr.partial_cka_min(case, ["a", "c"], 0.5) == 1.0
    del case["recommendation"]["tasks"]
    assert qr.partial_cka_min(case, ["a", "b"], 0.2) is None


@settings(max_examples=100, deadline=None)
@given(st.floats(0.05, 0.95), st.floats(0.05, 0.95), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_partial_cka_rises_with_the_pair_cka(ca: float, cb: float, low: float, high: float) -> None:
    low, high = sorted((low, high))
    drift = {"a": [1.0, ca], "b": [1.0, cb], "c": [1.0, 0.5]}
    values = [
        qr.partial_cka_min(_drifted(_case("d", ab=v, ac=0.5, bc=0.5), drift), ["a", "b"], 0.01)
        for v in (low, high)
    ]
    assert values[0] is not None and values[1] is not None
    assert values[0] <= values[1] + 1e-12


def test_partial_cka_comparison_picks_the_move_inside_each_fold() -> None:
    cases = [_drifted(c, {t: [1.0, 0.5] for t in TASKS}) for c in _cases()]
    out = qr.partial_cka_comparison(cases)
    assert out is not None and out["cases"] == 4 and out["n_groups"] == 16
    assert len(out["nested_moves"]) == 4
    assert set(out["nested_moves"]) <= set(qr.PARTIAL_MOVES)
    assert set(out["by_move"]) == {str(m) for m in qr.PARTIAL_MOVES}
    del cases[0]["recommendation"]["tasks"]
    del cases[1]["recommendation"]["tasks"]
    assert qr.partial_cka_comparison(cases) is None  # two datasets left: too few


def test_partial_cka_comparison_chooses_between_moves_that_differ() -> None:
    """Every model moved 0.3 at the last layer: up to a move of 0.3 that layer counts and the
    partial CKA separates the groups as the raw CKA does; at 0.4 no layer counts, every group
    reads 1.0 and nothing separates. Each fold must choose a move that separates."""
    cases = [_drifted(c, {t: [1.0, 0.7] for t in TASKS}) for c in _cases()]
    out = qr.partial_cka_comparison(cases)
    assert out is not None
    assert all(m <= 0.3 for m in out["nested_moves"])
    blind = out["by_move"]["0.4"]["balanced_accuracy_thresholds"]
    assert blind == pytest.approx(0.5)
    assert out["nested_balanced_accuracy"] > blind
    assert out["by_move"]["0.3"] != out["by_move"]["0.4"]


def test_partial_cka_comparison_groups_on_the_engines_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its regret rows group each held-out case on the engine's partial-CKA view at the fold's
    move (:func:`measure_view`): pairs whose partial CKA read no layer are marked, so the
    tie-break reads their plain CKA as the engine's does (:func:`table_of`)."""
    cases = [_drifted(c, {t: [1.0, 0.5] for t in TASKS}) for c in _cases()]
    seen: list[dict[str, Any]] = []
    judge = qr.judge_cases

    def spy(held: list[dict[str, Any]], folds: dict[str, Any]) -> list[dict[str, Any]]:
        seen.extend(held)
        return judge(held, folds)

    monkeypatch.setattr(qr, "judge_cases", spy)
    out = qr.partial_cka_comparison(cases)
    assert out is not None and len(seen) == 4
    for held, move in zip(seen, out["nested_moves"], strict=True):
        view = qr.measure_view(
            next(c for c in cases if c["case"] == held["case"]), "partial_cka", move
        )
        assert view is not None
        assert held["recommendation"]["pairs"] == view["recommendation"]["pairs"]
        assert all("partial_unread" in p for p in held["recommendation"]["pairs"])


def test_the_written_down_partial_rule_judges_only_cases_it_was_not_fitted_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [_drifted(c, {t: [1.0, 0.5] for t in TASKS}) for c in _cases()]
    # d1's data at another setting: not new data, though its case is not in the rule's list.
    cases.append(
        {
            **_drifted(_case("d1", ab=0.9, ac=0.1, bc=0.2), {t: [1.0, 0.5] for t in TASKS}),
            "case": "d1-lr",
        }
    )
    rule = {
        "cases": ["d1", "d2"],
        "move": 0.2,
        "thresholds": {"tau_rep": 0.0, "tau_grad": -0.275, "rho": 0.9},
    }
    (tmp_path / "rule.json").write_text(json.dumps(rule))
    monkeypatch.setattr(qr, "PARTIAL_PREREG", tmp_path / "rule.json")
    monkeypatch.setattr(qr, "family", lambda case: qr.SHIPPED_FAMILY)
    out = qr.partial_rule_on_unseen(cases)
    assert out is not None and out["cases"] == ["d3", "d4"] and out["groups"] == 8
    # Every model moved to 0.5: partial CKA (C - 0.25) / 0.75 at the last layer; a pair passes
    # at tau 0 when its CKA is 0.25 or more.
    for r in out["rows"]:
        assert r["verdict"] == (r["value"] >= 0.0)
    assert out["right"] == sum(r["matches"] == r["verdict"] for r in out["rows"])
    monkeypatch.setattr(qr, "PARTIAL_PREREG", tmp_path / "missing.json")
    assert qr.partial_rule_on_unseen(cases) is None


def test_the_partial_cka_decision_reads_the_written_move_on_the_named_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every model moved to 0.5 at the last layer: the partial CKA there is (C - 0.25) / 0.75.
    named = _drifted(_case("d1", 0.9, 0.2, 0.3), {t: [1.0, 0.5] for t in TASKS})
    named["recommendation"]["thresholds"] = {"tau_rep": 0.5, "tau_grad": -1.0, "rho": 1.0}
    without = _case("d2", 0.9, 0.2, 0.3)  # no CKA to the pretrained encoder: not counted
    without["recommendation"]["thresholds"] = named["recommendation"]["thresholds"]
    rule = {
        "move": 0.2,
        "thresholds": {"tau_rep": 0.0, "tau_grad": -1.0, "rho": 1.0},
        "decision_cases": ["d1", "d2"],
        "decision_min_groups": 4,
    }
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(rule))
    monkeypatch.setattr(qr, "PARTIAL_PREREG", path)
    out = qr.partial_cka_decision([named, without])
    assert out is not None and out["cases"] == ["d1"] and out["missing"] == ["d2"]
    # a+b (0.9) passes both rules; a+c (0.2) and b+c (0.3) fail the shipped 0.5; the partial
    # rule fails a+c ((0.2 - 0.25) / 0.75 < 0) and passes b+c ((0.3 - 0.25) / 0.75 > 0).
    verdicts = {tuple(r["tasks"]): (r["shipped"], r["partial"]) for r in out["rows"]}
    assert verdicts == {
        ("a", "b"): (True, True),
        ("a", "c"): (False, False),
        ("b", "c"): (False, True),
        ("a", "b", "c"): (False, False),
    }
    assert out["right"] == {"shipped": 4, "partial": 3} and not out["adopt"]
    rule["move"] = 0.6  # no layer moved that far: every pair reads 1.0 and passes
    path.write_text(json.dumps(rule))
    out = qr.partial_cka_decision([named])
    assert out is not None and all(r["partial"] for r in out["rows"])


def test_the_written_down_seed_floor_rules_judge_only_new_cases_with_floors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [
        _case("d1", ab=0.9, ac=0.1, bc=0.2, floor=0.5),
        _case("d2", ab=0.8, ac=0.7, bc=0.6, floor=0.5),
        _case("d3", ab=0.2, ac=0.55, bc=0.15, floor=0.5),
        _case("d4", ab=0.45, ac=0.95, bc=0.3, floor=0.5),
        # d3's data again: judged; d1's data under another case name: not new data.
        {**_case("d3", ab=0.45, ac=0.55, bc=0.15, floor=0.5), "case": "d3-lr"},
        {**_case("d1", ab=0.9, ac=0.1, bc=0.2, floor=0.5), "case": "d1-lr"},
    ]
    del cases[3]["seed_cka"]  # seedcka has not run on d4: no verdict there
    rule = {
        "cases": ["d1", "d2"],
        "relative": {"thresholds": {"tau_rep": 0.8, "tau_grad": -0.275, "rho": 0.9}},
        "raw": {"thresholds": {"tau_rep": 0.5, "tau_grad": -0.275, "rho": 0.9}},
    }
    (tmp_path / "rule.json").write_text(json.dumps(rule))
    monkeypatch.setattr(qr, "SEED_FLOOR_PREREG", tmp_path / "rule.json")
    monkeypatch.setattr(qr, "family", lambda case: qr.SHIPPED_FAMILY)
    out = qr.seed_floor_rules_on_unseen(cases)
    assert out is not None and set(out) == {"relative", "raw"}
    for kind, part in out.items():
        assert part["cases"] == ["d3", "d3-lr"] and part["groups"] == 8
        assert part["thresholds"] == rule[kind]["thresholds"]
    # A floor of 0.5 at the last layer (1 at the first, where every pair's CKA is 1): the
    # relative value is twice the raw one up to 1, so tau 0.8 relative is tau 0.4 raw.
    for rel, raw in zip(out["relative"]["rows"], out["raw"]["rows"], strict=True):
        assert rel["value"] == pytest.approx(min(1.0, 2 * raw["value"]))
        assert rel["verdict"] == (raw["value"] >= 0.4)
        assert raw["verdict"] == (raw["value"] >= 0.5)
    # d3-lr's a+b (CKA 0.45) tells the two rules apart: 0.9 relative passes, 0.45 raw does not.
    ab = [r for r in out["raw"]["rows"] if r["case"] == "d3-lr" and r["tasks"] == ["a", "b"]]
    rel_ab = [
        r for r in out["relative"]["rows"] if r["case"] == "d3-lr" and r["tasks"] == ["a", "b"]
    ]
    assert not ab[0]["verdict"] and rel_ab[0]["verdict"] and not ab[0]["matches"]
    # d3's only matching group (a+c, CKA 0.55) passes both; the rest lose and fail the raw rule.
    assert out["raw"]["balanced_accuracy"] == 1.0 and out["relative"]["balanced_accuracy"] < 1.0
    monkeypatch.setattr(qr, "SEED_FLOOR_PREREG", tmp_path / "missing.json")
    assert qr.seed_floor_rules_on_unseen(cases) is None


def test_a_case_file_is_replaced_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench_quality.save: a write that dies half-way leaves the previous file as it was and no
    temporary file behind; a good write replaces it; a missing folder is made."""
    import bench_quality

    path = tmp_path / "new" / "case.json"
    bench_quality.save(path, {"groups": [1]})
    assert json.loads(path.read_text()) == {"groups": [1]}

    real_write = Path.write_text

    def dies_half_way(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("killed mid-write")

    monkeypatch.setattr(Path, "write_text", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        bench_quality.save(path, {"groups": [1, 2, 3, 4, 5, 6]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"groups": [1]}
    assert [p.name for p in path.parent.iterdir()] == ["case.json"]
    bench_quality.save(path, {"groups": [1, 2]})
    assert json.loads(path.read_text()) == {"groups": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["case.json"]


def test_extension_seeds_start_from_the_seeds_a_case_has() -> None:
    """bench_quality.extension_seeds: a second extension starts from the seeds the first one left
    (not from the seeds the first one started from, which would train seeds 3 and 4 again over the
    stored ones), and a resumed extension adds the same seeds as the run it resumes."""
    from bench_quality import extension_seeds

    fresh = {"seeds": [0, 1, 2, 3, 4]}
    assert extension_seeds(fresh, 0, 10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert extension_seeds(fresh, 0, 5) == ([0, 1, 2, 3, 4], [])
    assert extension_seeds(fresh, 7, 6) == ([0, 1, 2, 3, 4], [12])
    extended_once = {"seeds": [0, 1, 2, 3, 4], "measured_seeds": [0, 1, 2]}
    assert extension_seeds(extended_once, 0, 10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    interrupted = {"seeds": list(range(10)), "measured_seeds": [0, 1, 2, 3, 4], "extending": 10}
    assert extension_seeds(interrupted, 0, 10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])


def test_the_written_down_seed_extension_compares_frozen_verdicts_then_and_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """more_seeds_test: only groups compared again over the target seeds count; each frozen
    verdict is scored against the outcome written down and the outcome now; flips are counted
    both ways; the ceiling 'then' reads the seeds of the first measurement only."""
    case = _case("d1", 0.9, 0.2, 0.2)  # a+b matches (2 seeds); the rest lose
    case["stl"] = {t: [0.8] * 4 for t in TASKS}
    # a+b: extended from 2 to 4 seeds and now loses: its two new seeds fell 0.2.
    ab = case["groups"][0]
    ab["before"] = {k: ab[k] for k in ("matches", "outcome", "per_task", "seeds") if k in ab}
    ab["before"]["outcome"] = "matches"
    ab.update(matches=False, seeds=[0, 1, 2, 3], mtl={"a": [0.8, 0.8, 0.6, 0.6], "b": [0.8] * 4})
    # a+c: extended, still loses; b+c: not extended (it still has 2 seeds), so it is left out.
    ac = case["groups"][1]
    ac["before"] = {k: ac[k] for k in ("matches", "per_task", "seeds")}
    ac.update(seeds=[0, 1, 2, 3], mtl={t: [0.7] * 4 for t in ac["tasks"]})
    plan = {
        "cases": ["d1"],
        "seeds_target": 4,
        "rules": {"default": {"tau_rep": 0.1}, "one_se": {"tau_rep": 0.5}},
        "groups": [
            {
                "case": "d1",
                "tasks": list(g["tasks"]),
                "matches_5": g["matches"] if "before" not in g else g["before"]["matches"],
                "verdict": {"default": True, "one_se": i == 0},
                "p_match": 0.9 if i == 0 else 0.2,
            }
            for i, g in enumerate(case["groups"][:3])
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    monkeypatch.setattr(qr, "MORE_SEEDS_PREREG", path)
    out = qr.more_seeds_test([case])
    assert out is not None
    assert out["groups"] == 2 and out["cases"] == ["d1"]
    assert (out["lose_then"], out["lose_now"], out["now_lose"], out["now_match"]) == (1, 2, 1, 0)
    # default says match on both: right on a+b then (1 of 2), on neither now.
    assert out["rules"]["default"]["right_then"] == 1 and out["rules"]["default"]["right_now"] == 0
    # one_se says match on a+b only: right on both then, on a+c only now.
    assert out["rules"]["one_se"]["right_then"] == 2 and out["rules"]["one_se"]["right_now"] == 1
    pm = out["rules"]["p_match"]
    assert pm["brier_then"] == pytest.approx((0.1**2 + 0.2**2) / 2)
    assert pm["brier_now"] == pytest.approx((0.9**2 + 0.2**2) / 2)
    then = qr.as_first_measured(case, ab)
    assert then["matches"] is True and then["mtl"]["a"] == [0.8, 0.8]
    # 'then' decides each group again on its first seeds only, and reproduces what was written
    assert out["ceiling_then"] is not None
    assert out["ceiling_then"]["groups"] == 2 and out["ceiling_then"]["not_reproduced"] == 0
    # A second extension's plan is read the same way, from the path given.
    assert out["prereg"] == "plan.json" and out["planned"] == ["d1"]
    assert qr.more_seeds_test([case], path) == out
    monkeypatch.setattr(qr, "MORE_SEEDS_PREREG", tmp_path / "missing.json")
    assert qr.more_seeds_test([case]) is None
    assert qr.more_seeds_test([case], tmp_path / "missing.json") is None


def test_regret_se_pairs_the_two_partitions_seed_by_seed() -> None:
    case = _case("d1", 0.9, 0.2, 0.2)
    # c is in both partitions and varies by seed: paired, it cancels; unpaired, it would not.
    case["stl"] = {"a": [0.8, 0.9, 0.7], "b": [0.6, 0.6, 0.6], "c": [0.3, 0.7, 0.5]}
    ab = case["groups"][0]
    ab["mtl"] = {"a": [0.7, 0.7, 0.7], "b": [0.6, 0.6, 0.6]}
    best = [["a"], ["b"], ["c"]]
    rec = [["a", "b"], ["c"]]
    # Per seed, best - rec = mean over a, b, c of the differences: a's (0.1, 0.2, 0.0) / 3.
    diff = np.array([0.1, 0.2, 0.0]) / 3
    expected = 100 * float(np.std(diff, ddof=1)) / math.sqrt(3)
    assert qr.regret_se(case, rec, best) == pytest.approx(expected)
    assert qr.regret_se(case, best, best) == 0.0
    assert qr.regret_se(case, [["a", "b", "c"]], best) is not None  # over its 2 seeds
    case["groups"] = case["groups"][1:]  # a+b no longer measured
    assert qr.regret_se(case, rec, best) is None


def test_learnt_pairs_cka_skips_pairs_with_a_task_that_did_not_learn() -> None:
    """learnt_pairs_cka_min reads seed 0's single-task model against the chance baseline, as
    the service's stl.learnt does; with_learnt_pairs makes the grouping search read it."""
    case = _case("d1", 0.9, 0.2, 0.3)
    assert qr.learnt_pairs_cka_min(case, ["a", "b", "c"]) is None  # no baselines stored
    # c's seed-0 model is at its baseline (it did not learn); its mean over seeds is not read.
    case["stl"] = {"a": [0.8, 0.8], "b": [0.8, 0.8], "c": [0.41, 0.9]}
    case["stl_baseline"] = {"a": 0.4, "b": 0.4, "c": 0.4}
    assert qr.learnt_pairs_cka_min(case, ["a", "b", "c"]) == 0.9
    assert qr.learnt_pairs_cka_min(case, ["a", "c"]) == 1.0
    case["stl"]["c"] = [0.8, 0.8]
    assert qr.learnt_pairs_cka_min(case, ["a", "b", "c"]) == 0.2
    case["stl"]["c"] = [0.41, 0.9]
    pairs = {
        frozenset(p["tasks"]): p["cka_min"]
        for p in qr.with_learnt_pairs(case)["recommendation"]["pairs"]
    }
    assert pairs == {frozenset("ab"): 0.9, frozenset("ac"): 1.0, frozenset("bc"): 1.0}
    assert case["recommendation"]["pairs"][1]["cka_min"] == 0.2  # the case itself is unchanged


def test_the_measure_view_reads_each_pair_s_partial_cka_where_the_case_recorded_the_drift(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drift = {t: [1.0, 0.6] for t in TASKS}
    case = _drifted(_case("d", ab=1.0, ac=0.36, bc=0.68), drift)
    assert qr.measure_view(case, "cka") is case
    view = qr.measure_view(case, "partial_cka", 0.2)
    assert view is not None
    got = {frozenset(p["tasks"]): p["cka_min"] for p in view["recommendation"]["pairs"]}
    assert got[frozenset("ab")] == pytest.approx(1.0)
    assert got[frozenset("ac")] == pytest.approx(0.0, abs=1e-9)
    assert got[frozenset("bc")] == pytest.approx((0.68 - 0.36) / 0.64)
    assert case["recommendation"]["pairs"][1]["cka_min"] == 0.36  # the case is unchanged
    # Fast mode's evidence is read on its own drift, or marked unjudged without it.
    case["fast"] = {"pairs": [dict(p) for p in case["recommendation"]["pairs"]]}
    assert qr.measure_view(case, "partial_cka", 0.2)["fast"]["unjudged"]  # type: ignore[index]
    case["fast"]["tasks"] = [{"name": t, "cka_to_pretrained": [1.0, 0.9]} for t in TASKS]
    fast = qr.measure_view(case, "partial_cka", 0.2)["fast"]  # type: ignore[index]
    assert "unjudged" not in fast and {p["cka_min"] for p in fast["pairs"]} == {1.0}  # 0.1 < 0.2
    # The engine's own view follows its default measure; a case without the drift has none.
    monkeypatch.setattr(qr, "ENGINE_MEASURE", "partial_cka")
    assert qr.measure_view(case) is not None
    del case["recommendation"]["tasks"]
    assert qr.measure_view(case) is None
    assert qr.engine_view(case) is case


def test_the_engine_view_waives_the_pairs_of_a_task_that_did_not_learn() -> None:
    case = _case("d1", 0.9, 0.2, 0.3)
    assert qr.engine_view(case, waive=True) is case  # no baselines: nothing to read
    case["stl_baseline"] = {t: 0.4 for t in TASKS}
    case["stl"]["c"] = [0.41, 0.9]  # seed 0 did not learn c
    case["fast"] = {
        "stl": {"a": 0.8, "b": 0.41, "c": 0.8},  # fast mode's models: b did not learn
        "pairs": [dict(p) for p in case["recommendation"]["pairs"]],
    }
    assert qr.engine_view(case, waive=False) is case
    view = qr.engine_view(case, waive=True)
    waived = {frozenset(p["tasks"]) for p in view["recommendation"]["pairs"] if p["cka_waived"]}
    assert waived == {frozenset("ac"), frozenset("bc")}
    fast = {frozenset(p["tasks"]) for p in view["fast"]["pairs"] if p["cka_waived"]}
    assert fast == {frozenset("ab"), frozenset("bc")}
    assert "cka_waived" not in case["recommendation"]["pairs"][0]  # the case is unchanged
    # The verdicts read the waiver: a+c's CKA 0.2 is not read; a+b+c's weakest read pair is a+b.
    obs = {o.tasks: o for o in qr.case_observations(view)}
    assert obs[("a", "c")].cka_min == 1.0 and obs[("a", "b", "c")].cka_min == 0.9
    assert qr.table_of(view).get("a", "c").passes(qr.grp.Thresholds(0.5, -1.0, 1.0))


def test_the_written_down_learnt_pairs_rule_judges_only_unseen_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, new = _case("d1", 0.9, 0.2, 0.2), _case("d2", 0.9, 0.3, 0.3)
    for c in (seen, new):
        c["stl_baseline"] = {t: 0.4 for t in TASKS}
    rule = {"cases": ["d1"], "thresholds": {"tau_rep": 0.5, "tau_grad": -1.0, "rho": 1.0}}
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(rule))
    monkeypatch.setattr(qr, "LEARNT_PAIRS_PREREG", path)
    out = qr.learnt_pairs_rule_on_unseen([seen, new])
    assert out is not None and out["cases"] == ["d2"] and out["groups"] == 4
    assert out["right"] == 4  # every task learnt: the plain min CKA, which decides d2 exactly
    monkeypatch.setattr(qr, "LEARNT_PAIRS_PREREG", tmp_path / "missing.json")
    assert qr.learnt_pairs_rule_on_unseen([seen, new]) is None


def test_the_learnt_pairs_decision_counts_the_named_complete_cases_against_their_own_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named, other, unfinished = (_case(d, 0.9, 0.2, 0.3) for d in ("d1", "d2", "d3"))
    for c in (named, other, unfinished):
        c["stl_baseline"] = {t: 0.4 for t in TASKS}
        c["stl"]["c"] = [0.41, 0.9]  # c's seed-0 model did not learn
        c["recommendation"]["thresholds"] = {"tau_rep": 0.5, "tau_grad": -1.0, "rho": 1.0}
    unfinished["complete"] = False
    rule = {
        "cases": [],
        "thresholds": {"tau_rep": 0.5, "tau_grad": -1.0, "rho": 1.0},
        "decision_cases": ["d1", "d3", "d4"],
        "decision_min_groups": 4,
    }
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(rule))
    monkeypatch.setattr(qr, "LEARNT_PAIRS_PREREG", path)
    out = qr.learnt_pairs_decision([named, other, unfinished])
    assert out is not None and out["cases"] == ["d1"] and out["missing"] == ["d3", "d4"]
    # Measured as the plain CKA says: the shipped thresholds get all four groups right; the rule
    # waives c's pairs and calls a+c, b+c and a+b+c "match", which lose.
    assert out["groups"] == 4 and out["lose"] == 3
    assert out["right"] == {"shipped": 4, "learnt_pairs": 1} and not out["adopt"]
    for g in named["groups"]:
        g["matches"] = True  # a task that learnt nothing has nothing to lose
    out = qr.learnt_pairs_decision([named])
    assert out is not None and out["right"] == {"shipped": 1, "learnt_pairs": 4} and out["adopt"]
    rule["decision_min_groups"] = 5
    path.write_text(json.dumps(rule))
    out = qr.learnt_pairs_decision([named])
    assert out is not None and not out["adopt"]  # too few groups to decide
    named["recommendation"]["thresholds"]["tau_rep"] = 0.1  # the thresholds the case ran with
    out = qr.learnt_pairs_decision([named])
    assert out is not None and out["right"]["shipped"] == 4


def test_learnt_pairs_comparison_matches_the_plain_cka_when_every_task_learnt() -> None:
    cases = _cases()
    assert qr.learnt_pairs_comparison(cases) is None  # no baselines stored
    for c in cases:
        c["stl_baseline"] = {t: 0.4 for t in TASKS}
    out = qr.learnt_pairs_comparison(cases)
    assert out is not None and out["cases"] == 4 and out["groups"] == 16
    assert out["learnt_pairs"] == out["plain"]
    assert out["regret_cases"] == 4 and out["regret_within_1"] == out["regret_cases"]


def _extendable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[int]]:
    """A 2-task case file measured on 3 seeds, and bench_quality.extend_case with the training
    replaced by fakes whose macro-F1 encodes the seed (STL 0.5 + seed/100, MTL 0.4 + seed/100):
    ``trained`` lists the MTL seeds trained, in order."""
    import types

    import bench_quality as bq

    import models.pipeline
    import models.verify

    monkeypatch.setattr(bq, "OUT", tmp_path)
    monkeypatch.setattr(
        bq,
        "case_spec",
        lambda *a, **k: types.SimpleNamespace(analysis=types.SimpleNamespace(tolerance=0.01)),
    )
    job = types.SimpleNamespace(encoder=None, tokenized={"a": 0, "b": 0}, device="cpu", pad_id=0)
    monkeypatch.setattr(models.pipeline, "prepare", lambda spec: job)

    finetuned: list[int] = []

    def finetunes(job: Any, tracker: Any, a: Any, b: Any, *, seeds: list[int]) -> None:
        finetuned.extend(seeds)
        job.stl = {
            n: [types.SimpleNamespace(macro_f1=0.5 + s / 100, val_preds=[]) for s in seeds]
            for n in "ab"
        }

    trained: list[int] = []

    def train_mtl(**kw: Any) -> Any:
        trained.append(kw["seed"])
        f1 = {n: 0.4 + kw["seed"] / 100 for n in kw["tasks"]}
        return models.verify.MTLResult(list(kw["tasks"]), f1, {}, {}, 10, 1.0, kw["seed"])

    def compare(group: list[str], tok: Any, stl: Any, runs: Any, **kw: Any) -> dict[str, Any]:
        n = len(runs)
        per_task = [
            {
                "task": t,
                "delta": float(np.mean([r.macro_f1[t] - stl[t][i][0] for i, r in enumerate(runs)])),
                "tolerance": 0.01,
                "seed_deltas": [r.macro_f1[t] - stl[t][i][0] for i, r in enumerate(runs)],
            }
            for t in group
        ]
        return {
            "tasks": group,
            "matches": False,
            "outcome": "loses",
            "per_task": per_task,
            "seeds_given": [r.seed for r in runs],
            "n": n,
        }

    monkeypatch.setattr(models.pipeline, "run_finetunes", finetunes)
    monkeypatch.setattr(models.verify, "train_mtl", train_mtl)
    monkeypatch.setattr(models.verify, "compare_group", compare)
    seeds = [0, 1, 2]

    def group(tasks: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "tasks": tasks,
            "matches": True,
            "outcome": "matches",
            "per_task": [],
            "seeds": seeds,
            "mtl": {n: [0.4 + s / 100 for s in seeds] for n in "ab"},
            "steps": 30,
            "seconds": 3.0,
            "steps_per_seed": 10,
            "predicted": True,
            **extra,
        }

    result = {
        "seeds": seeds,
        "stl": {n: [0.5 + s / 100 for s in seeds] for n in "ab"},
        "groups": [
            group(["a", "b"], before={"matches": False, "seeds": [0, 1]}),
            group(["b", "a"]),
        ],
    }
    bq.save(tmp_path / "c.json", result)
    case = types.SimpleNamespace(
        name="c",
        training=types.SimpleNamespace(seed=0),
        load=lambda: (None, ["a", "b"], None),
        finetuned=finetuned,  # the STL seeds fine-tuned, in order
    )
    return bq, case, trained


def test_extend_case_adds_seeds_keeps_the_chain_and_orders_the_deltas_by_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bq, case, trained = _extendable(tmp_path, monkeypatch)
    out = bq.extend_case(case, 5)
    assert trained == [3, 4, 3, 4]
    assert "extending" not in out and out["seeds"] == [0, 1, 2, 3, 4]
    assert out["stl"]["a"] == pytest.approx([0.5 + s / 100 for s in range(5)])
    first, second = out["groups"]
    assert first["seeds"] == [0, 1, 2, 3, 4]
    assert first["mtl"]["a"] == pytest.approx([0.4 + s / 100 for s in range(5)])
    assert first["seeds_given"] == [3, 4, 0, 1, 2]  # new seeds first: the bootstrap reads them
    # ... but the stored per-seed differences follow the seeds, and each pairs a seed with itself
    assert [p["seed_deltas"] for p in first["per_task"]] == [pytest.approx([-0.1] * 5)] * 2
    assert first["before"]["seeds"] == [0, 1, 2] and first["before"]["before"]["seeds"] == [0, 1]
    assert "before" not in second["before"]
    assert json.loads((tmp_path / "c.json").read_text()) == out
    assert bq.extend_case(case, 5) == out and trained == [3, 4, 3, 4]  # nothing left to add


def test_extend_case_resumes_where_it_was_killed_and_only_to_its_own_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bq, case, trained = _extendable(tmp_path, monkeypatch)
    calls = {"n": 0}
    real = bq.save

    def dies_after_the_first_group(path: Path, result: dict[str, Any]) -> None:
        real(path, result)
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(bq, "save", dies_after_the_first_group)
    with pytest.raises(RuntimeError, match="killed"):
        bq.extend_case(case, 5)
    stored = json.loads((tmp_path / "c.json").read_text())
    assert stored["extending"] == 5 and stored["measured_seeds"] == [0, 1, 2]
    assert [len(g["seeds"]) for g in stored["groups"]] == [5, 3]
    with pytest.raises(ValueError, match="--seeds 5"):
        bq.extend_case(case, 7)
    # Until the extension finishes, the report reads the case as it stood before it began.
    partial = qr.load_cases(tmp_path)[0]
    assert partial["seeds"] == [0, 1, 2] and "extending" not in partial
    assert partial["extension_in_progress"] == (1, 5)
    assert [g["seeds"] for g in partial["groups"]] == [[0, 1, 2]] * 2
    assert [g["matches"] for g in partial["groups"]] == [True, True]
    assert partial["groups"][0]["mtl"]["a"] == pytest.approx([0.4, 0.41, 0.42])
    assert partial["stl"]["a"] == pytest.approx([0.5, 0.51, 0.52])
    # ... its training totals too, which the cost table divides by the case's seeds
    assert [(g["steps"], g["seconds"]) for g in partial["groups"]] == [(30, 3.0)] * 2
    trained.clear()
    case.finetuned.clear()
    # A stored macro-F1 that the retrained first new seed would not give again is warned about.
    bad = json.loads((tmp_path / "c.json").read_text())
    bad["stl"]["a"][3] = 0.9
    (tmp_path / "c.json").write_text(json.dumps(bad))
    out = bq.extend_case(case, 5)
    assert trained == [3, 4]  # the first group is not trained again
    assert case.finetuned == [3]  # nor the STL models of seed 4: their macro-F1s are stored
    assert "retrained on resume differ" in capsys.readouterr().err
    assert "extending" not in out and [len(g["seeds"]) for g in out["groups"]] == [5, 5]
    assert out["groups"][0]["before"]["seeds"] == [0, 1, 2]
    assert out["stl"]["b"] == pytest.approx([0.5 + s / 100 for s in range(5)])


def test_extend_case_trains_on_the_device_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case first measured on a GPU is extended there (``extend --device cuda``): the job's
    analysis config carries the device, which ``prepare`` turns into the job's device."""
    import types

    bq, case, _ = _extendable(tmp_path, monkeypatch)
    asked: list[str] = []

    def spec(*a: Any, **k: Any) -> Any:
        asked.append(k["analysis"].device)
        return types.SimpleNamespace(analysis=types.SimpleNamespace(tolerance=0.01))

    monkeypatch.setattr(bq, "case_spec", spec)
    bq.extend_case(case, 4, "cuda")
    assert asked == ["cuda"]
    # The command line takes the flag (a name that is not a measured case is skipped).
    assert bq.main(["extend", "--seeds", "4", "--only", "nothing", "--device", "cuda"]) == 0


def test_regret_mean_reports_mean_se_and_median_over_cases() -> None:
    out = qr.regret_mean([0.0, 0.0, 1.0, 3.0])
    assert out["regret_mean"] == pytest.approx(1.0)
    assert out["regret_median"] == pytest.approx(0.5)
    # sample SD of (0, 0, 1, 3) is sqrt(2), over sqrt(4) cases
    assert out["regret_mean_se"] == pytest.approx(2**0.5 / 2)
    assert qr.regret_mean([2.0])["regret_mean_se"] is None
    assert qr.regret_mean([]) == {
        "regret_mean": None,
        "regret_mean_se": None,
        "regret_median": None,
    }


def test_crossfit_regret_scores_the_chosen_best_on_seeds_it_did_not_see() -> None:
    """a+b's mean beats the single-task models only through the even seeds: the plain regret
    of the singletons is positive, the cross-fitted one sees the even-seed winner lose on the
    odd seeds and the odd-seed winner (the singletons) tie on the even ones."""
    case = _case("d1", 0.9, 0.1, 0.1)
    for t in TASKS:
        case["stl"][t] = [0.8] * 4
    for g in case["groups"]:
        g["mtl"] = {t: [v[0]] * 4 for t, v in g["mtl"].items()}
    ab = case["groups"][0]
    assert ab["tasks"] == ["a", "b"]
    ab["mtl"] = {"a": [0.95, 0.7, 0.95, 0.7], "b": [0.8] * 4}
    singletons = [["a"], ["b"], ["c"]]
    best, score = qr.best_partition(case)
    assert qr.same_partition(best, [["a", "b"], ["c"]])
    plain = 100 * (score - qr.partition_score(singletons, qr.group_f1(case)))
    assert plain == pytest.approx(100 * 0.025 / 3)
    # Even seeds choose a+b, which the odd seeds score 0.1 / 3 under the singletons; the odd
    # seeds choose the singletons, regret 0 on the even ones.
    assert qr.crossfit_regret(case, singletons) == pytest.approx(100 * (-0.1 / 3 + 0.0) / 2)
    # Recommending a+b: no regret where the even seeds chose it; the odd seeds' choice, the
    # singletons, scores 0.15 / 3 under it on the even seeds. The plain regret is 0.
    assert qr.crossfit_regret(case, [["a", "b"], ["c"]]) == pytest.approx(
        100 * (0.0 - 0.15 / 3) / 2
    )
    case["stl"]["c"] = [0.8]  # one seed in common: no halves
    assert qr.crossfit_regret(case, singletons) is None
    case["stl"]["c"] = [0.8] * 4
    case["groups"] = case["groups"][1:]  # a+b no longer measured
    assert qr.crossfit_regret(case, [["a", "b"], ["c"]]) is None


def _extend_all(case: dict[str, Any], seeds: int, new_f1: dict[frozenset[str], float]) -> None:
    """Extend every group of ``case`` to ``seeds`` seeds as ``bench_quality.py extend`` does: the
    comparison so far goes under ``before`` (keeping its own chain); a group in ``new_f1`` gets
    that MTL macro-F1 on each new seed and is decided by whether its mean reaches STL's 0.8,
    the others repeat their last seed and keep their outcome; every STL model adds 0.8s."""
    for g in case["groups"]:
        kept = ("matches", "outcome", "per_task", "seeds", "before")
        g["before"] = {k: g[k] for k in kept if k in g}
        extra = seeds - len(g["seeds"])
        key = frozenset(g["tasks"])
        g["mtl"] = {t: v + [new_f1.get(key, v[-1])] * extra for t, v in g["mtl"].items()}
        g["seeds"] = list(range(seeds))
        if key in new_f1:
            g["matches"] = bool(np.mean(next(iter(g["mtl"].values()))) >= 0.8 - 1e-9)
    case["stl"] = {t: v + [0.8] * (seeds - len(v)) for t, v in case["stl"].items()}


def test_a_second_extension_keeps_the_first_readable_and_scores_frozen_recommendations(
    tmp_path: Path,
) -> None:
    """Extended 2 -> 4 -> 6 seeds: comparison_at walks the chain of ``before``s (MTL cut to the
    seeds), a plan for 4 seeds still reads 2 -> 4 and one for 6 reads 4 -> 6 (with the plan's
    ``matches_before``), and each plan's frozen recommendations are scored before and after."""
    case = _case("d1", 0.9, 0.2, 0.2)  # a+b matches at 0.8 on 2 seeds; the rest lose at 0.7
    ab = frozenset("ab")
    _extend_all(case, 4, {ab: 0.9})  # a+b: mean 0.85, matches
    _extend_all(case, 6, {ab: 0.6})  # a+b: mean 0.767, now loses
    entry = next(g for g in case["groups"] if frozenset(g["tasks"]) == ab)
    assert entry["matches"] is False
    at4 = qr.comparison_at(entry, 4)
    assert at4 is not None and at4["matches"] is True and at4["mtl"]["a"] == [0.8, 0.8, 0.9, 0.9]
    at2 = qr.comparison_at(entry, 2)
    assert at2 is not None and at2["mtl"]["a"] == [0.8, 0.8] and "before" not in at2
    assert qr.comparison_at(entry, 3) is None and qr.comparison_at(entry, 8) is None
    view = qr.case_at(case, 4)
    assert view is not None and view["stl"]["a"] == [0.8] * 4 and case["stl"]["a"] == [0.8] * 6

    recs = {"d1": {"default": [["a", "b"], ["c"]], "held_out": [["a"], ["b"], ["c"]]}}

    def plan(target: int, key: str) -> Path:
        groups = [
            {
                "case": "d1",
                "tasks": ["a", "b"],
                key: True,  # a+b matched on 2 seeds and on 4
                "verdict": {"default": True, "held_out": False},
                "p_match": 0.9,
            }
        ]
        rules = {"default": {}, "held_out": "per case"}
        body = {"cases": ["d1"], "seeds_target": target, "rules": rules, "groups": groups}
        path = tmp_path / f"plan{target}.json"
        path.write_text(json.dumps({**body, "recommendations": recs}))
        return path

    four = qr.more_seeds_test([case], plan(4, "matches_5"))
    assert four is not None and four["groups"] == 1
    assert four["seeds_from"] == [2] and (four["now_lose"], four["now_match"]) == (0, 0)
    six = qr.more_seeds_test([case], plan(6, "matches_before"))
    assert six is not None and six["seeds_from"] == [4] and six["now_lose"] == 1
    assert six["rules"]["default"]["right_then"] == 1 and six["rules"]["default"]["right_now"] == 0
    # Regret, in F1 points. On 4 seeds a+b (0.85) beats the single-task models (0.8): the
    # all-singletons recommendation gives up (0.85 * 2 + 0.8) / 3 - 0.8; on 6 seeds a+b (0.767)
    # loses to them and merging it costs 0.8 - (0.767 * 2 + 0.8) / 3.
    r4, r6 = four["regret"]["rows"][0], six["regret"]["rows"][0]
    assert r4["default_now"] == pytest.approx(0.0, abs=1e-9)
    assert r4["held_out_now"] == pytest.approx(100 * ((0.85 * 2 + 0.8) / 3 - 0.8))
    assert r6["default_then"] == pytest.approx(0.0, abs=1e-9)
    assert r6["default_now"] == pytest.approx(100 * (0.8 - (4.6 / 6 * 2 + 0.8) / 3))
    assert r6["held_out_now"] == pytest.approx(0.0, abs=1e-9)
    assert r6["default_crossfit_now"] is not None
    assert six["regret"]["summary"]["default_now"]["at_most_1"] == 0
    # A plan that froze no recommendations has no regret part.
    bare = json.loads(plan(6, "matches_before").read_text())
    del bare["recommendations"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    out = qr.more_seeds_test([case], tmp_path / "bare.json")
    assert out is not None and out["regret"] is None


def test_unread_pairs_counts_pairs_the_partial_cka_cannot_read_and_a_hindsight_ceiling() -> None:
    # No case holds how far its models moved: nothing can be read on the partial-CKA view.
    assert qr.unread_pairs([_case("d0", 0.9, 0.2, 0.6)]) is None
    # Every model moved 0.1 from the pretrained encoder, less than the engine's move: no pair's
    # partial CKA reads a layer, so the verdict calls all three pairs a match on the gradients.
    moved_little = {t: [1.0, 0.9] for t in TASKS}
    case = _drifted(_case("d1", ab=0.9, ac=0.2, bc=0.6), moved_little)
    got = qr.unread_pairs([case, _case("d2", 0.9, 0.9, 0.9)])
    assert got == {
        "cases": 1,
        "pairs": 3,
        "match": 2,  # a+c (raw CKA 0.2) loses
        "shipped_right": 2,
        "best_raw_threshold": 0.6,  # the lowest raw CKA that also calls a+c a loss
        "best_right": 3,
    }
    # Models that moved far read their layers: no pair is unread.
    moved_far = {t: [1.0, 0.2] for t in TASKS}
    far = _drifted(_case("d3", ab=0.9, ac=0.2, bc=0.6), moved_far)
    assert qr.unread_pairs([far])["pairs"] == 0  # type: ignore[index]
