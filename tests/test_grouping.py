"""Tests for models.grouping: verdicts, evidence, set partitions, searches, candidates, verdict."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.grouping import (
    CandidateScore,
    GroupingResult,
    PairEvidence,
    PairTable,
    Thresholds,
    bell_number,
    default_thresholds,
    exhaustive_grouping,
    grouping_beats,
    heuristic_grouping,
    judge_group,
    normalize_candidate,
    overall_verdict,
    pair_failures,
    pair_margin,
    pair_shortfall,
    recommend_grouping,
    score_candidates,
    set_partitions,
)
from models.options import AnalysisConfig

TH = Thresholds(tau_rep=0.6, tau_grad=0.1, rho=0.3)  # fixed: the tests do not follow the defaults
ROOT = Path(__file__).resolve().parents[1]

# (cka_min, cka_min_layer, grad_cosine, conflict_rate)
Metrics = tuple[float, int, float, float]


def passing(level: float = 0.0) -> Metrics:
    """A passing pair; a higher level raises its affinity."""
    return (0.7 + level, 3, 0.3 + level, 0.1)


FAILING: Metrics = (0.4, 6, 0.0, 0.45)  # misses: CKA 0.2, conflict 0.15, gradient 0.1


def table_of(tasks: Sequence[str], metrics: Callable[[str, str], Metrics]) -> PairTable:
    pairs = [
        PairEvidence(a, b, *metrics(a, b)) for i, a in enumerate(tasks) for b in tasks[i + 1 :]
    ]
    return PairTable.from_pairs(tasks, pairs)


def blocks_table(tasks: Sequence[str], blocks: Sequence[str]) -> PairTable:
    """Pairs within a block pass, others fail; each block is a string of one-letter task names."""
    block_of = {t: next(k for k, b in enumerate(blocks) if t in b) for t in tasks}
    return table_of(tasks, lambda a, b: passing() if block_of[a] == block_of[b] else FAILING)


# ----------------------------------------------------------------------------------------------
# Pair evidence
# ----------------------------------------------------------------------------------------------


def test_affinity_is_half_cka_plus_half_gradient_cosine() -> None:
    ev = PairEvidence("A", "B", 0.8, 2, 0.2, 0.1)
    assert ev.affinity == pytest.approx(0.5)


def test_an_unread_partial_cka_ranks_by_the_plain_cka() -> None:
    """A partial CKA with no layer read passes as 1.0, but its affinity reads the plain CKA."""
    unread = PairEvidence("A", "B", 1.0, None, 0.02, 0.2, measure="partial_cka", raw_cka_min=0.18)
    assert unread.cka_judged == 1.0 and unread.passes(Thresholds(0.0, -0.3, 0.9))
    assert unread.affinity == pytest.approx(0.5 * 0.18 + 0.5 * 0.02)
    read = PairEvidence("A", "B", 0.3, 4, 0.02, 0.2, measure="partial_cka", raw_cka_min=0.18)
    assert read.affinity == pytest.approx(0.5 * 0.3 + 0.5 * 0.02)
    unknown = PairEvidence("A", "B", 1.0, None, 0.02, 0.2, measure="partial_cka")
    assert unknown.affinity == pytest.approx(0.5 * 1.0 + 0.5 * 0.02)  # stored before it was kept
    waived = PairEvidence(
        "A", "B", 1.0, None, 0.02, 0.2, measure="partial_cka", raw_cka_min=0.18, cka_waived=True
    )
    assert waived.affinity == pytest.approx(0.5 * 1.0 + 0.5 * 0.02)
    report = {
        "tasks": ["A", "B"],
        "rep_measure": "partial_cka",
        "cka_min": 0.18,
        "cka_min_layer": 6,
        "partial_cka_min": 1.0,
        "partial_cka_min_layer": None,
        "grad_cosine": 0.02,
        "conflict_rate": 0.2,
    }
    assert PairEvidence.from_report(report) == unread
    assert PairEvidence.from_report({**report, "rep_measure": "cka"}).raw_cka_min is None
    with pytest.raises(ValueError, match="raw_cka_min must be finite"):
        PairEvidence("A", "B", 1.0, None, 0.0, 0.2, measure="partial_cka", raw_cka_min=math.nan)


def test_two_unread_pairs_tie_break_on_the_plain_cka() -> None:
    """The planted pair and a wrong one both unread; the triple refused by a read pair: the
    plain CKA, not a gradient cosine near 0, picks the pair (sweep-mid-t3-400-s209)."""
    th = Thresholds(tau_rep=0.0, tau_grad=-0.275, rho=0.9)

    def pair(
        a: str, b: str, partial: float, layer: int | None, cos: float, raw: float
    ) -> PairEvidence:
        return PairEvidence(a, b, partial, layer, cos, 0.2, measure="partial_cka", raw_cka_min=raw)

    table = PairTable.from_pairs(
        list("abc"),
        [
            pair("a", "b", 1.0, None, -0.016, 0.64),
            pair("a", "c", -0.14, 6, -0.012, 0.13),
            pair("b", "c", 1.0, None, 0.022, 0.18),
        ],
    )
    assert exhaustive_grouping(list("abc"), table, th).grouping == [["a", "b"], ["c"]]


def test_pair_failures_name_the_limiting_numbers() -> None:
    ev = PairEvidence("A", "B", 0.41, 6, -0.05, 0.45)
    assert pair_failures(ev, TH) == [
        "tasks A, B: layer 6 CKA 0.41 < 0.60",
        "tasks A, B: gradient cosine -0.05 < 0.10",
        "tasks A, B: conflict rate 0.45 > 0.30",
    ]
    assert pair_shortfall(ev, TH) == pytest.approx(0.19 + 0.15 + 0.15)
    good = PairEvidence("A", "B", 0.6, 1, 0.1, 0.3)  # thresholds are inclusive
    assert pair_failures(good, TH) == []
    assert pair_shortfall(good, TH) == 0.0


def test_evidence_shows_more_decimals_when_two_would_hide_the_miss() -> None:
    ev = PairEvidence("A", "B", 0.599, 4, 0.5, 0.0)
    assert pair_failures(ev, TH) == ["tasks A, B: layer 4 CKA 0.599 < 0.600"]


def test_a_waived_pair_is_judged_on_its_gradients_alone() -> None:
    low = PairEvidence("A", "B", 0.41, 6, 0.2, 0.1, cka_waived=True)
    assert low.passes(TH) and pair_failures(low, TH) == []
    assert pair_shortfall(low, TH) == 0.0
    assert pair_margin(low, TH) == pytest.approx(0.1)  # the gradient cosine's 0.2 - 0.1
    assert low.cka_judged == 1.0 and low.affinity == pytest.approx(0.6)
    bad = PairEvidence("A", "B", 0.41, 6, -0.05, 0.45, cka_waived=True)
    assert pair_failures(bad, TH) == [
        "tasks A, B: gradient cosine -0.05 < 0.10",
        "tasks A, B: conflict rate 0.45 > 0.30",
    ]
    report = {
        "tasks": ["A", "B"],
        "cka_min": 0.41,
        "cka_min_layer": 6,
        "grad_cosine": 0.2,
        "conflict_rate": 0.1,
    }
    assert not PairEvidence.from_report(report).cka_waived  # reports made before the waiver
    assert PairEvidence.from_report({**report, "cka_waived": True}) == low


def test_a_partial_cka_pair_names_its_measure_and_reads_its_own_report_keys() -> None:
    th = Thresholds(tau_rep=0.0, tau_grad=-0.3, rho=0.9)
    apart = PairEvidence("A", "B", -0.13, 4, 0.01, 0.5, measure="partial_cka", raw_cka_min=0.62)
    assert apart.label == "partial CKA"
    assert pair_failures(apart, th) == ["tasks A, B: layer 4 partial CKA -0.13 < 0.00"]
    report = {
        "tasks": ["A", "B"],
        "rep_measure": "partial_cka",
        "cka_min": 0.62,
        "cka_min_layer": 6,
        "partial_cka_min": -0.13,
        "partial_cka_min_layer": 4,
        "grad_cosine": 0.01,
        "conflict_rate": 0.5,
    }
    assert PairEvidence.from_report(report) == apart
    assert PairEvidence.from_report({**report, "rep_measure": "cka"}).cka_min == 0.62
    # No layer where both models moved: the partial CKA is 1.0 and says where it was not read.
    still = PairEvidence("A", "B", 1.0, None, 0.01, 0.5, measure="partial_cka")
    verdict = judge_group(["A", "B"], PairTable.from_pairs(["A", "B"], [still]), th)
    assert verdict.matches
    assert verdict.evidence[0].startswith(
        "the pair passes: min-layer partial CKA 1.00 (no layer where both models moved) >= 0.00"
    )
    with pytest.raises(ValueError, match="needs its layer"):
        PairEvidence("A", "B", 1.0, None, 0.01, 0.5)
    with pytest.raises(ValueError, match="measure 'svcca'"):
        PairEvidence("A", "B", 1.0, 2, 0.01, 0.5, measure="svcca")


def test_each_measure_has_its_own_default_thresholds() -> None:
    assert default_thresholds("cka") == Thresholds(tau_rep=0.125, tau_grad=-0.3, rho=1.0)
    # The engine's defaults are those of its default measure.
    assert default_thresholds(AnalysisConfig().rep_measure) == AnalysisConfig().thresholds
    assert AnalysisConfig().thresholds == Thresholds()
    assert default_thresholds("partial_cka") == Thresholds(tau_rep=0.05, tau_grad=-0.275, rho=0.9)
    with pytest.raises(ValueError, match="measure"):
        default_thresholds("svcca")


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.integers(0, 12),
    st.floats(-1.0, 1.0),
    st.floats(0.0, 1.0),
    st.floats(-1.0, 1.0),
    st.floats(-1.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_waiving_a_pair_is_reading_its_cka_as_one(
    cka: float, layer: int, cos: float, rate: float, tau_rep: float, tau_grad: float, rho: float
) -> None:
    th = Thresholds(tau_rep, tau_grad, rho)
    waived = PairEvidence("A", "B", cka, layer, cos, rate, cka_waived=True)
    as_one = PairEvidence("A", "B", 1.0, layer, cos, rate)
    assert waived.passes(th) == as_one.passes(th)
    assert pair_shortfall(waived, th) == pair_shortfall(as_one, th)
    assert pair_margin(waived, th) == pair_margin(as_one, th)
    assert waived.affinity == as_one.affinity
    assert pair_failures(waived, th) == pair_failures(as_one, th)
    # Waiving never makes a pair worse.
    plain = PairEvidence("A", "B", cka, layer, cos, rate)
    assert pair_shortfall(waived, th) <= pair_shortfall(plain, th)
    assert waived.passes(th) or not plain.passes(th)


def test_a_group_verdict_says_which_pairs_it_did_not_read_the_cka_of() -> None:
    metrics = {
        frozenset("AB"): (0.71, 5, 0.40, 0.05),
        frozenset("AC"): (0.20, 2, 0.23, 0.02),
        frozenset("BC"): (0.10, 1, 0.50, 0.10),
    }
    waived = {frozenset("AC"), frozenset("BC")}  # C's single-task model learnt little
    pairs = [
        PairEvidence(a, b, *metrics[frozenset((a, b))], cka_waived=frozenset((a, b)) in waived)
        for a, b in (("A", "B"), ("A", "C"), ("B", "C"))
    ]
    table = PairTable.from_pairs(["A", "B", "C"], pairs)
    verdict = judge_group(["A", "B", "C"], table, TH)
    assert verdict.matches
    assert verdict.evidence == [
        "all 3 pairs pass: lowest min-layer CKA 0.71 (A, B at layer 5) >= 0.60 (not read on 2 "
        "pairs with a task whose single-task model learnt little); "
        "lowest gradient cosine 0.23 (A, C) >= 0.10; highest conflict rate 0.10 (B, C) <= 0.30"
    ]
    (alone,) = judge_group(["A", "C"], table, TH).evidence
    assert alone.startswith("the pair passes: CKA not read (a task's single-task model learnt")
    every = PairTable.from_pairs(
        ["A", "B", "C"], [dataclasses.replace(p, cka_waived=True) for p in pairs]
    )
    (sentence,) = judge_group(["A", "B", "C"], every, TH).evidence
    assert sentence.startswith("all 3 pairs pass: CKA not read (every pair has a task whose")
    # Without the waiver the same evidence fails on both pairs with C, worst first.
    plain = PairTable.from_pairs(
        ["A", "B", "C"], [dataclasses.replace(p, cka_waived=False) for p in pairs]
    )
    assert judge_group(["A", "B", "C"], plain, TH).evidence == [
        "tasks B, C: layer 1 CKA 0.10 < 0.60",
        "tasks A, C: layer 2 CKA 0.20 < 0.60",
    ]


def test_invalid_evidence_and_thresholds_are_rejected() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        PairEvidence("A", "A", 0.7, 1, 0.3, 0.1)
    with pytest.raises(ValueError, match="conflict rate"):
        PairEvidence("A", "B", 0.7, 1, 0.3, 1.5)
    with pytest.raises(ValueError, match="finite"):
        PairEvidence("A", "B", math.nan, 1, 0.3, 0.1)
    with pytest.raises(ValueError, match="rho"):
        Thresholds(rho=2.0)
    with pytest.raises(ValueError, match="tau_rep is a CKA"):
        Thresholds(tau_rep=1.2)  # no pair could pass, a waived one included


def test_pair_table_validates_and_looks_up_unordered_pairs() -> None:
    tasks = ["A", "B", "C"]
    ab = PairEvidence("B", "A", 0.7, 1, 0.3, 0.1)
    ac = PairEvidence("A", "C", 0.5, 2, 0.3, 0.1)
    bc = PairEvidence("B", "C", 0.8, 3, 0.4, 0.0)
    table = PairTable.from_pairs(tasks, [ab, ac, bc])
    assert len(table) == 3
    assert table.get("A", "B").a == "A" and table.get("B", "A").a == "B"
    assert table["C", "A"].cka_min == 0.5
    assert ("C", "B") in table
    with pytest.raises(KeyError):
        table.get("A", "Z")
    with pytest.raises(ValueError):
        table.get("A", "A")
    with pytest.raises(ValueError, match=r"pair \(B, C\) is missing"):
        PairTable.from_pairs(tasks, [ab, ac])
    with pytest.raises(ValueError, match="more than once"):
        PairTable.from_pairs(tasks, [ab, ac, bc, PairEvidence("C", "B", 0.8, 3, 0.4, 0.0)])
    with pytest.raises(ValueError, match="'Z'"):
        PairTable.from_pairs(tasks, [ab, ac, bc, PairEvidence("A", "Z", 0.8, 3, 0.4, 0.0)])
    with pytest.raises(ValueError, match="listed twice"):
        PairTable.from_pairs(["A", "A"], [])


# ----------------------------------------------------------------------------------------------
# Group verdicts
# ----------------------------------------------------------------------------------------------


def test_singleton_trivially_matches() -> None:
    table = blocks_table(["A", "B"], ["A", "B"])
    verdict = judge_group(["A"], table, TH)
    assert verdict.matches
    assert verdict.evidence == ["a single task is its own single-task model"]
    assert verdict.score is None and verdict.margin is None and verdict.shortfall == 0.0


def test_passing_group_names_its_weakest_evidence() -> None:
    metrics = {
        frozenset("AB"): (0.71, 5, 0.40, 0.05),
        frozenset("AC"): (0.80, 2, 0.23, 0.02),
        frozenset("BC"): (0.90, 1, 0.50, 0.10),
    }
    table = table_of(["A", "B", "C"], lambda a, b: metrics[frozenset((a, b))])
    verdict = judge_group(["A", "B", "C"], table, TH)
    assert verdict.matches
    assert verdict.evidence == [
        "all 3 pairs pass: lowest min-layer CKA 0.71 (A, B at layer 5) >= 0.60; "
        "lowest gradient cosine 0.23 (A, C) >= 0.10; highest conflict rate 0.10 (B, C) <= 0.30"
    ]
    affinities = [0.5 * (0.71 + 0.40), 0.5 * (0.80 + 0.23), 0.5 * (0.90 + 0.50)]
    assert verdict.score == pytest.approx(sum(affinities) / 3)
    assert verdict.margin == pytest.approx(0.11)  # A, B: CKA 0.71 - 0.60
    assert verdict.shortfall == 0.0


def test_failing_group_lists_every_failure_worst_first() -> None:
    metrics = {
        frozenset("AB"): (0.41, 6, 0.30, 0.10),
        frozenset("AC"): (0.80, 2, -0.05, 0.10),
        frozenset("BC"): (0.90, 1, 0.05, 0.42),
    }
    table = table_of(["A", "B", "C"], lambda a, b: metrics[frozenset((a, b))])
    verdict = judge_group(["A", "B", "C"], table, TH)
    assert not verdict.matches
    assert verdict.evidence == [
        "tasks A, B: layer 6 CKA 0.41 < 0.60",  # misses by 0.19
        "tasks A, C: gradient cosine -0.05 < 0.10",  # by 0.15
        "tasks B, C: conflict rate 0.42 > 0.30",  # by 0.12
        "tasks B, C: gradient cosine 0.05 < 0.10",  # by 0.05
    ]
    assert verdict.margin == pytest.approx(-0.19)
    assert verdict.shortfall == pytest.approx(0.19 + 0.15 + 0.12 + 0.05)


def test_judge_group_rejects_unknown_and_repeated_tasks() -> None:
    table = blocks_table(["A", "B"], ["AB"])
    with pytest.raises(KeyError):
        judge_group(["A", "Z"], table, TH)
    with pytest.raises(ValueError):
        judge_group(["A", "A"], table, TH)
    with pytest.raises(ValueError):
        judge_group([], table, TH)


# ----------------------------------------------------------------------------------------------
# Set partitions
# ----------------------------------------------------------------------------------------------

BELL = [1, 1, 2, 5, 15, 52, 203, 877, 4140]


@pytest.mark.parametrize("n", range(9))
def test_set_partitions_count_is_bell_and_all_are_valid_and_distinct(n: int) -> None:
    partitions = list(set_partitions(range(n)))
    assert len(partitions) == BELL[n] == bell_number(n)
    seen = set()
    for partition in partitions:
        flat = sorted(x for block in partition for x in block)
        assert flat == list(range(n))  # every item exactly once
        assert all(block and block == sorted(block) for block in partition)
        assert [block[0] for block in partition] == sorted(block[0] for block in partition)
        seen.add(tuple(tuple(block) for block in partition))
    assert len(seen) == len(partitions)


def test_set_partitions_of_nothing_is_the_one_empty_partition() -> None:
    assert list(set_partitions([])) == [[]]
    assert bell_number(10) == 115_975


def test_set_partitions_order_is_deterministic() -> None:
    partitions = list(set_partitions("abc"))
    assert partitions[0] == [["a", "b", "c"]]
    assert partitions[-1] == [["a"], ["b"], ["c"]]
    assert partitions == list(set_partitions("abc"))


# ----------------------------------------------------------------------------------------------
# Exhaustive search on hand-made instances
# ----------------------------------------------------------------------------------------------


def test_two_planted_blocks_give_two_groups() -> None:
    tasks = ["a", "d", "b", "e", "c"]
    result = exhaustive_grouping(tasks, blocks_table(tasks, ["abc", "de"]), TH)
    assert result.grouping == [["a", "b", "c"], ["d", "e"]]  # canonical: input order
    assert result.method == "exhaustive" and result.feasible and result.within_budget
    assert all(v.matches for v in result.verdicts)
    assert result.mean_affinity == pytest.approx(0.5)
    assert result.notes == ["exhaustive search over the 52 set partitions of 5 tasks"]


def test_all_compatible_gives_one_group_and_none_compatible_gives_singletons() -> None:
    tasks = list("abcde")
    one = exhaustive_grouping(tasks, table_of(tasks, lambda a, b: passing()), TH)
    assert one.grouping == [tasks]
    none = exhaustive_grouping(tasks, table_of(tasks, lambda a, b: FAILING), TH)
    assert none.grouping == [[t] for t in tasks]
    assert none.feasible and none.mean_affinity is None


def test_fewest_groups_wins_over_higher_affinity() -> None:
    # a-b and c-d are very close; a-c, a-d, b-c, b-d pass only barely; {a,b,c,d} passes as a whole.
    close = {frozenset("ab"), frozenset("cd")}
    tasks = list("abcd")
    barely: Metrics = (0.61, 1, 0.11, 0.2)
    table = table_of(tasks, lambda a, b: passing(0.25) if frozenset((a, b)) in close else barely)
    result = exhaustive_grouping(tasks, table, TH)
    assert result.grouping == [tasks]  # mean affinity 0.49, against 0.75 for {a, b} + {c, d}
    assert result.mean_affinity == pytest.approx((2 * 0.75 + 4 * 0.36) / 6)


def test_tie_in_group_count_goes_to_the_higher_mean_affinity() -> None:
    # all pairs pass except a-b and c-d: the 2-group answers are {a,c}{b,d} and {a,d}{b,c}
    fail = {frozenset("ab"), frozenset("cd")}
    strong = {frozenset("ad"), frozenset("bc")}

    def metrics(a: str, b: str) -> Metrics:
        pair = frozenset((a, b))
        if pair in fail:
            return FAILING
        return passing(0.2) if pair in strong else passing(0.0)

    result = exhaustive_grouping(list("abcd"), table_of(list("abcd"), metrics), TH)
    assert result.grouping == [["a", "d"], ["b", "c"]]
    assert result.mean_affinity == pytest.approx(0.7)


def test_exhaustive_refuses_too_many_tasks() -> None:
    tasks = [f"t{i}" for i in range(13)]
    table = table_of(tasks, lambda a, b: passing())
    with pytest.raises(ValueError, match="12 tasks"):
        exhaustive_grouping(tasks, table, TH)
    with pytest.raises(ValueError, match="exhaustive_limit"):
        recommend_grouping(tasks, table, TH, exhaustive_limit=13)


def test_recommend_rejects_bad_inputs() -> None:
    tasks = list("abc")
    table = blocks_table(tasks, ["abc"])
    with pytest.raises(ValueError, match="at least one task"):
        recommend_grouping([], table, TH)
    with pytest.raises(ValueError, match="'z'"):
        recommend_grouping(["a", "z"], table, TH)
    with pytest.raises(ValueError, match="max_groups"):
        recommend_grouping(tasks, table, TH, max_groups=0)
    single = recommend_grouping(["b"], table, TH)
    assert single.grouping == [["b"]] and single.feasible


# ----------------------------------------------------------------------------------------------
# Budget
# ----------------------------------------------------------------------------------------------


def test_binding_budget_forces_the_least_violating_grouping() -> None:
    tasks = list("abcdef")

    # three passing blocks; pairs across the first two miss only slightly (shortfall 0.05 each),
    # so under a budget of 2 the cheapest merge is {a, b} + {c, d}
    def metrics(a: str, b: str) -> Metrics:
        block = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2}
        if block[a] == block[b]:
            return passing()
        if {block[a], block[b]} == {0, 1}:
            return (0.55, 2, 0.3, 0.1)  # shortfall 0.05 per pair
        return FAILING

    table = table_of(tasks, metrics)
    free = exhaustive_grouping(tasks, table, TH)
    assert free.grouping == [["a", "b"], ["c", "d"], ["e", "f"]]
    forced = exhaustive_grouping(tasks, table, TH, max_groups=2)
    assert forced.grouping == [["a", "b", "c", "d"], ["e", "f"]]
    assert not forced.feasible and not forced.within_budget
    assert forced.shortfall == pytest.approx(4 * 0.05)
    assert any(
        note.startswith("max_groups=2 forced a partition in which some groups fail: {a, b, c, d}")
        for note in forced.notes
    )
    loose = exhaustive_grouping(tasks, table, TH, max_groups=3)
    assert loose.grouping == free.grouping and loose.feasible and loose.within_budget
    one = exhaustive_grouping(tasks, table, TH, max_groups=1)
    assert one.grouping == [tasks] and not one.feasible


def test_budget_is_never_exceeded() -> None:
    rng = random.Random(7)
    for _ in range(40):
        n = rng.randint(2, 8)
        tasks, table = random_instance(rng, n)
        for budget in range(1, n + 1):
            for search in (exhaustive_grouping, heuristic_grouping):
                result = search(tasks, table, TH, max_groups=budget)
                assert len(result.grouping) <= budget
                assert result.feasible == all(v.matches for v in result.verdicts)
                assert result.within_budget == result.feasible
                if not result.feasible:
                    assert any("forced a partition" in note for note in result.notes)


# ----------------------------------------------------------------------------------------------
# Heuristic versus exhaustive
# ----------------------------------------------------------------------------------------------


def random_instance(rng: random.Random, n: int) -> tuple[list[str], PairTable]:
    """Metrics around the thresholds; the share of passing pairs (density) varies per instance
    from sparse to dense, sometimes with planted blocks, sometimes on a coarse grid (many ties)."""
    tasks = [f"t{i}" for i in range(n)]
    style = rng.randrange(3)
    density = rng.uniform(0.05, 0.95)
    shift, spread = rng.uniform(-0.25, 0.25), rng.uniform(0.02, 0.3)
    block = [rng.randrange(max(1, n // 3)) for _ in range(n)]
    coarse = rng.random() < 0.25
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            if style == 0:  # each metric drawn around its threshold
                cka = min(1.0, TH.tau_rep + shift + rng.gauss(0, spread))
                grad = TH.tau_grad + shift + rng.gauss(0, spread)
                conflict = min(1.0, max(0.0, TH.rho - shift + rng.gauss(0, spread)))
            else:  # pass/fail decided first (at the density, or by planted block)
                ok = block[i] == block[j] if style == 2 else rng.random() < density
                if ok:
                    cka = rng.uniform(TH.tau_rep, 1.0)
                    grad = rng.uniform(TH.tau_grad, 0.6)
                    conflict = rng.uniform(0.0, TH.rho)
                else:
                    cka, grad = rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.6)
                    conflict = rng.uniform(0.0, 0.6)
                    if cka >= TH.tau_rep and grad >= TH.tau_grad and conflict <= TH.rho:
                        cka = rng.uniform(0.3, TH.tau_rep - 0.01)
            if coarse:
                cka, grad, conflict = round(cka, 1), round(grad, 1), round(conflict, 1)
            pairs.append(PairEvidence(tasks[i], tasks[j], cka, rng.randrange(13), grad, conflict))
    return tasks, PairTable.from_pairs(tasks, pairs)


def same_answer(a: GroupingResult, b: GroupingResult) -> bool:
    if len(a.grouping) != len(b.grouping) or a.feasible != b.feasible:
        return False
    if abs(a.shortfall - b.shortfall) > 1e-9:
        return False
    if a.mean_affinity is None or b.mean_affinity is None:
        return a.mean_affinity is None and b.mean_affinity is None
    return abs(a.mean_affinity - b.mean_affinity) <= 1e-9


def test_heuristic_agrees_with_exhaustive_on_random_instances() -> None:
    rng = random.Random(2024)
    disagreements = []
    instances = 0
    for n in range(2, 11):
        for _ in range(45):
            tasks, table = random_instance(rng, n)
            budget = rng.randint(1, n) if rng.random() < 0.4 else None
            exact = exhaustive_grouping(tasks, table, TH, max_groups=budget)
            found = heuristic_grouping(tasks, table, TH, max_groups=budget)
            instances += 1
            if not same_answer(exact, found):
                disagreements.append((n, budget, exact.grouping, found.grouping))
    assert instances == 405
    assert disagreements == []


def test_heuristic_is_deterministic() -> None:
    tasks, table = random_instance(random.Random(3), 14)
    first = heuristic_grouping(tasks, table, TH)
    second = heuristic_grouping(tasks, table, TH)
    assert first == second
    assert heuristic_grouping(tasks, table, TH, max_groups=3) == heuristic_grouping(
        tasks, table, TH, max_groups=3
    )


def test_heuristic_recovers_thirty_tasks_in_planted_blocks() -> None:
    rng = random.Random(11)
    sizes = [7, 6, 5, 4, 4, 3, 1]
    tasks = [f"task{i:02d}" for i in range(30)]
    order = list(range(30))
    rng.shuffle(order)
    block_of: dict[str, int] = {}
    position = 0
    for k, size in enumerate(sizes):
        for i in order[position : position + size]:
            block_of[tasks[i]] = k
        position += size

    def metrics(a: str, b: str) -> Metrics:
        if block_of[a] == block_of[b]:
            return (rng.uniform(0.65, 0.95), 4, rng.uniform(0.15, 0.6), rng.uniform(0.0, 0.25))
        return (rng.uniform(0.3, 0.9), 7, rng.uniform(-0.2, 0.3), rng.uniform(0.35, 0.6))

    table = table_of(tasks, metrics)
    result = recommend_grouping(tasks, table, TH)
    assert result.method == "heuristic"
    planted = sorted(sorted(t for t in tasks if block_of[t] == k) for k in range(len(sizes)))
    assert sorted(result.grouping) == planted
    assert result.feasible


# ----------------------------------------------------------------------------------------------
# Exhaustive search against a brute-force reference (property-based)
# ----------------------------------------------------------------------------------------------


def reference_key(partition: list[list[str]], table: PairTable) -> tuple[bool, float, int, float]:
    """The documented order, written independently: passing groupings first (shortfall 0), then
    lowest shortfall, fewest groups, highest mean within-group affinity."""
    verdicts = [judge_group(group, table, TH) for group in partition]
    pairs = [table.get(a, b) for g in partition for i, a in enumerate(g) for b in g[i + 1 :]]
    mean = -sum(ev.affinity for ev in pairs) / len(pairs) if pairs else math.inf
    failing = not all(v.matches for v in verdicts)
    shortfall = sum(v.shortfall for v in verdicts)
    return (failing, round(shortfall, 9), len(partition), round(mean, 9))


metric = st.tuples(
    st.floats(0.3, 1.0), st.integers(0, 12), st.floats(-0.3, 0.6), st.floats(0.0, 0.6)
)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(metric, min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2),
            st.none() | st.integers(1, n),
        )
    )
)
def test_exhaustive_matches_brute_force_over_set_partitions(
    case: tuple[int, list[Metrics], int | None],
) -> None:
    n, values, budget = case
    tasks = [f"t{i}" for i in range(n)]
    pairs = iter(values)
    table = table_of(tasks, lambda a, b: next(pairs))
    result = exhaustive_grouping(tasks, table, TH, max_groups=budget)
    allowed = [p for p in set_partitions(tasks) if budget is None or len(p) <= budget]
    best = min(reference_key(p, table) for p in allowed)
    got = reference_key(result.grouping, table)
    assert got[0] == best[0] and got[2] == best[2]
    assert got[1] == pytest.approx(best[1], abs=1e-8)
    assert got[3] == pytest.approx(best[3], abs=1e-8)
    assert sorted(t for g in result.grouping for t in g) == sorted(tasks)
    assert result.feasible == (not got[0])


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------


def test_normalize_candidate_validates_and_fills_in_singletons() -> None:
    tasks = list("abcde")
    assert normalize_candidate([["d", "b"]], tasks) == [["a"], ["b", "d"], ["c"], ["e"]]
    assert normalize_candidate([], tasks) == [[t] for t in tasks]
    with pytest.raises(ValueError, match="'z'"):
        normalize_candidate([["a", "z"]], tasks)
    with pytest.raises(ValueError, match="'b'"):
        normalize_candidate([["a", "b"], ["b", "c"]], tasks)
    with pytest.raises(ValueError, match="empty"):
        normalize_candidate([["a"], []], tasks)
    with pytest.raises(ValueError, match="string"):
        normalize_candidate(["ab"], tasks)


def test_candidates_are_scored_and_exactly_one_is_best() -> None:
    tasks = list("abcde")
    table = blocks_table(tasks, ["abc", "de"])
    candidates = [
        [["a", "b", "c", "d", "e"]],  # one model, fails
        [["a", "b"], ["d", "e"]],  # passes, 3 models (c alone)
        [["a", "b", "c"], ["d", "e"]],  # passes, 2 models: the best
        [["c", "b", "a"]],  # passes, 3 models
    ]
    scores = score_candidates(candidates, tasks, table, TH)
    assert [s.index for s in scores] == [0, 1, 2, 3]
    assert [s.best for s in scores] == [False, False, True, False]
    assert [s.passes for s in scores] == [False, True, True, True]
    assert [s.n_models for s in scores] == [1, 3, 2, 3]
    assert scores[1].grouping == [["a", "b"], ["c"], ["d", "e"]]
    assert scores[0].shortfall > 0 and not scores[0].groups[0].matches
    assert scores[0].groups[0].evidence[0].startswith("tasks a, d: layer 6 CKA 0.40 < 0.60")
    assert score_candidates([], tasks, table, TH) == []

    recommended = recommend_grouping(tasks, table, TH)
    best = next(s for s in scores if s.best)
    assert not grouping_beats(recommended, best)  # same grouping: not strictly better
    assert grouping_beats(recommended, scores[1])


def test_candidate_ties_break_on_affinity_then_index() -> None:
    tasks = list("abcd")
    fail = {frozenset("ab"), frozenset("cd")}
    strong = {frozenset("ad"), frozenset("bc")}

    def metrics(a: str, b: str) -> Metrics:
        pair = frozenset((a, b))
        return FAILING if pair in fail else passing(0.2 if pair in strong else 0.0)

    table = table_of(tasks, metrics)
    scores = score_candidates(
        [[["a", "c"], ["b", "d"]], [["a", "d"], ["b", "c"]], [["b", "c"], ["a", "d"]]],
        tasks,
        table,
        TH,
    )
    assert [s.best for s in scores] == [False, True, False]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(0, 6), min_size=7, max_size=7))
def test_no_candidate_beats_the_recommendation(seed: int, labels: list[int]) -> None:
    tasks, table = random_instance(random.Random(seed), 7)
    candidate = [
        [t for t, label in zip(tasks, labels, strict=True) if label == k] for k in range(7)
    ]
    candidate = [group for group in candidate if group]
    recommended = recommend_grouping(tasks, table, TH)
    scores = score_candidates([recommended.grouping, candidate], tasks, table, TH)
    assert scores[0].best  # ties go to the lower index
    assert scores[0].n_models == len(recommended.grouping)
    assert scores[0].mean_affinity == recommended.mean_affinity
    assert not grouping_beats(recommended, scores[0])
    other = scores[1]
    tied = (
        other.passes
        and other.n_models == scores[0].n_models
        and (
            other.mean_affinity is None
            or abs(other.mean_affinity - (recommended.mean_affinity or 0.0)) < 1e-12
        )
    )
    assert grouping_beats(recommended, other) == (not tied)


def test_grouping_beats_a_worse_candidate_even_when_it_passes() -> None:
    tasks = list("abc")
    table = blocks_table(tasks, ["abc"])
    recommended = recommend_grouping(tasks, table, TH)
    singletons = CandidateScore(0, [], True, 3, None, 0.0, True)
    assert grouping_beats(recommended, singletons)


# ----------------------------------------------------------------------------------------------
# Overall verdict
# ----------------------------------------------------------------------------------------------


def test_overall_verdict_kinds() -> None:
    assert overall_verdict([list("abcde")], 5) == ("single_model", "one model for all 5 tasks")
    assert overall_verdict([["a", "b"], ["c", "d", "e"]], 5) == (
        "grouped",
        "2 models: {a, b} + {c, d, e}",
    )
    assert overall_verdict([["a", "b"], ["c"], ["d"]], 4) == (
        "grouped",
        "3 models: {a, b} + {c} + {d}",
    )
    single = ("single_task", "keep single-task models (one per task)")
    assert overall_verdict([["a"], ["b"], ["c"]], 3) == single
    assert overall_verdict([["a"]], 1) == single
    with pytest.raises(ValueError):
        overall_verdict([["a", "b"]], 3)


def test_module_imports_no_torch() -> None:
    code = "import sys, models.grouping; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------


def test_exhaustive_search_of_ten_tasks_completes() -> None:
    """The hardest 10-task case finishes (~1 s on an idle 2-core machine; no timed assertion,
    since shared CI machines vary): every pair misses by a hair, so shortfalls tie and the
    budgeted search prunes least."""
    tasks = [f"t{i}" for i in range(10)]
    table = table_of(tasks, lambda a, b: (TH.tau_rep - 1e-14, 2, 0.3, 0.1))
    rng = random.Random(5)
    for budget in (None, 5, 9):
        result = exhaustive_grouping(tasks, table, TH, max_groups=budget)
        assert len(result.grouping) <= (budget or 10)
    for _ in range(5):
        budget = rng.randint(1, 9)
        result = exhaustive_grouping(*random_instance(rng, 10), TH, max_groups=budget)
        assert len(result.grouping) <= budget


def test_heuristic_handles_forty_tasks() -> None:
    tasks, table = random_instance(random.Random(40), 40)
    result = heuristic_grouping(tasks, table, TH)
    assert sorted(t for group in result.grouping for t in group) == sorted(tasks)
    assert result.feasible and all(v.matches for v in result.verdicts)
