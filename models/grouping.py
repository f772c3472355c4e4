"""Stage 4 of METHOD.md: group verdicts, the recommended grouping, candidate scores, verdict.

Pure Python (no torch, no numpy), so that the API process and other light processes can use it.

Decision rule
-------------
A pair of tasks *passes* when its min-over-layers CKA >= ``tau_rep``, its whole-encoder
gradient cosine >= ``tau_grad`` and its conflict rate (share of samples with cosine < 0) <=
``rho`` (with ``waive_unlearnt_cka``, opt-in, a pair with a task whose single-task model learnt
little is judged without its CKA: ``PairEvidence.cka_waived``; with ``rep_measure``
"partial_cka", the CKA read is the min-over-layers partial CKA given the pretrained encoder,
``PairEvidence.measure``, with its own thresholds, :func:`default_thresholds`). A group gets
the verdict "MTL matches STL" when every pair in it passes; a singleton trivially matches (it
is its own single-task model). Every verdict names its limiting evidence: the failing
conditions, worst first ("tasks A, B: layer 6 CKA 0.41 < 0.60"), or, for a passing
group, the weakest value of each condition.

Two derived numbers rank pairs and groupings:

* pair *affinity* = 0.5 * cka + 0.5 * grad_cosine (both on a cosine-like scale); it only
  breaks ties between groupings with the same number of groups;
* pair *shortfall* = (tau_rep - cka)^+ + (tau_grad - grad_cosine)^+ + (conflict_rate - rho)^+,
  the total amount by which the pair misses its thresholds (0 when it passes).

Here ``cka`` is the pair's min-over-layers CKA, or 1.0 where the pair's CKA is waived (a task of
it whose single-task model learnt little, ``PairEvidence.cka_waived``): such a pair is judged on
its gradients alone.

Ordering of groupings (lower key is better)
-------------------------------------------
A grouping is *feasible* when all of its groups pass. Its mean affinity is the mean over all
within-group pairs (pair-weighted, not a mean of group means). Without a budget the
recommendation minimises ``(not feasible, n_groups, -mean_affinity)``; all singletons is always
feasible, so the recommendation always is. An all-singleton grouping has no within-group pair:
its affinity key is +inf, last among equals (it is also the only grouping with T groups, so this
never decides anything). Sums and means are compared rounded to 12 decimals, so that float
summation order never decides; exact ties go to the canonical order (groups compared as tuples
of task positions), which makes every answer deterministic.

With ``max_groups``, only groupings with at most ``max_groups`` groups are allowed. If the best
feasible grouping fits, it is the answer. Otherwise no feasible grouping fits, and the answer is
the least-violating one: lowest total shortfall (sum over within-group failing pairs), then
fewest groups, then highest mean affinity; it is marked ``feasible=False`` and a note names the
failing groups. Both cases are one key, ``(not feasible, shortfall, n_groups, -mean_affinity)``,
minimised under the budget (feasible groupings have shortfall 0).

Search
------
Up to ``exhaustive_limit`` (default 10) tasks the search is exhaustive. Per-subset (bitmask)
tables say which groups pass and hold their affinity and shortfall sums; a depth-first
enumeration of set partitions (lowest unplaced task first, largest group first) visits only
passing groups and is pruned by the best group count found so far (at most Bell(10) = 115,975
partitions). Under a binding budget a second enumeration visits the groupings with at most
``max_groups`` groups, pruned by shortfall.

Beyond that a deterministic heuristic runs from several starts: task orderings by compatibility
degree (both directions), by affinity, the input order, and ``restarts`` permutations drawn from
``random.Random(seed)``. Each start greedily inserts every task into the passing group where its
mean affinity to the members is highest (else opens a new group), then eliminates groups
(redistributes all members of a group into the others, with one-step ejection chains), then
hill-climbs with single-task moves, swaps between two groups, and re-partitions of the union of
two groups (merges included) and of three groups (small unions only), accepting only strict
improvements of the key. The best start is then improved by iterated local search: 2 x
``restarts`` kicks, each moving three random tasks to random groups before climbing again, kept
only when the key improves (this escapes optima that only a coordinated change of four or more
groups improves). Under a binding budget the same local search minimises the budget key from the
feasible starts merged down to ``max_groups`` groups and from budget-aware greedy insertions, and
the best of these gets the three-group re-partitions (too costly for every start without the
pass requirement) and the kicks. Candidate neighbours are screened with running sums and
confirmed with the exact key. The tests check the heuristic against the exhaustive search on
random instances of up to 10 tasks (same number of groups, feasibility, shortfall and mean
affinity).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

#: Largest task count that :func:`exhaustive_grouping` accepts (Bell(12) = 4,213,597 partitions).
EXHAUSTIVE_HARD_LIMIT = 12

# Decimals kept when comparing sums and means, so that float summation order never decides a tie.
_ROUND = 12
# Largest union of two groups that the re-partition move enumerates (2^(u-1) splits).
_REPARTITION_LIMIT = 12
# Largest union of three groups that the polishing re-partition enumerates.
_REPARTITION3_LIMIT = 9
_SINGLETON_EVIDENCE = "a single task is its own single-task model"


# --------------------------------------------------------------------------------------------------
# Thresholds and pair evidence
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds of a pair (METHOD.md stage 4)."""

    # Defaults: those of the engine's default measure, the partial CKA (AnalysisConfig.rep_measure;
    # default_thresholds gives each measure's). tau_grad and rho are the partial-CKA rule as
    # written down before the cases that decided its adoption ran
    # (bench/results/partial_cka_prereg.json: fitted in sample on 22 cases, 109 groups). tau_rep
    # was 0.0 there; 0.05 was adopted by bench/results/planted_sweep_3_prereg.json's written
    # decision: unrelated tasks' partial CKA sits near 0, and at 0.0 a pair of them passed by
    # chance (README "How good is the verdict?"). The gradient cosines barely separate matching
    # from losing groups (every |cosine| < 0.15), so tau_grad is loose and rho near 1: the
    # verdict rests on the representations.
    tau_rep: float = 0.05  # min-over-layers (partial) CKA a pair needs
    tau_grad: float = -0.275  # whole-encoder gradient cosine a pair needs
    rho: float = 0.9  # max conflict rate (share of samples with cosine < 0)

    def __post_init__(self) -> None:
        for name in ("tau_rep", "tau_grad", "rho"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"threshold {name} must be finite, got {getattr(self, name)}")
        if not -1.0 <= self.tau_rep <= 1.0:
            # CKA lies in [0, 1] (a partial CKA in [-1, 1]): beyond, no pair could pass.
            raise ValueError(f"tau_rep is a CKA and must lie in [-1, 1], got {self.tau_rep}")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho is a share of samples and must lie in [0, 1], got {self.rho}")


def default_thresholds(measure: str) -> Thresholds:
    """The fitted default thresholds of a representation measure (a key of REP_MEASURES): each
    measure's CKA has its own scale (a partial CKA is near 0 where two models moved apart)."""
    if measure not in REP_MEASURES:
        raise ValueError(f"measure must be one of {', '.join(REP_MEASURES)}, got {measure!r}")
    return _DEFAULT_THRESHOLDS[measure]


#: The representation measures stage 4 can read (``AnalysisConfig.rep_measure``), as evidence names
#: them: min-over-layers CKA (METHOD.md), or min-over-layers *partial* CKA given the pretrained
#: encoder (``models.similarity.partial_cka``; README "How good is the verdict?").
REP_MEASURES = {"cka": "CKA", "partial_cka": "partial CKA"}


_DEFAULT_THRESHOLDS = {
    # Fitted on 38 cases, 173 groups (bench/bench_quality.py report --ship).
    "cka": Thresholds(tau_rep=0.125, tau_grad=-0.3, rho=1.0),
    # The partial-CKA rule as written down before the cases that decided it ran
    # (bench/results/partial_cka_prereg.json: fitted in sample on 22 cases, 109 groups), with
    # tau_rep 0.05 since planted_sweep_3_prereg.json's decision.
    "partial_cka": Thresholds(),
}


@dataclass(frozen=True)
class PairEvidence:
    """What stages 2 and 3 measured for one pair of tasks."""

    a: str
    b: str
    # The representation similarity the verdict reads (``measure``): the min over layers of the
    # pair's CKA, or of its partial CKA over the layers where both models moved.
    cka_min: float
    # Layer where the min occurs (0 = embeddings); None for a partial CKA with no layer where both
    # models moved (``cka_min`` is then 1.0).
    cka_min_layer: int | None
    grad_cosine: float  # whole-encoder mean gradient cosine
    conflict_rate: float  # share of samples with cosine < 0, in [0, 1]
    # True when the CKA condition is not read for this pair: one of its tasks' single-task models
    # learnt little (``stl.learnt`` false) and the job waives such pairs
    # (``AnalysisConfig.waive_unlearnt_cka``). A model that learnt nothing has no accuracy to lose,
    # and its CKA compares a model that does not solve the task. The gradient conditions still hold.
    cka_waived: bool = False
    measure: str = "cka"  # a key of REP_MEASURES
    # The pair's plain min-over-layers CKA, kept beside a partial CKA (None otherwise): where the
    # partial CKA reads no layer, the affinity reads it (see ``affinity``).
    raw_cka_min: float | None = None

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"a pair needs two distinct tasks, got {self.a!r} twice")
        if self.measure not in REP_MEASURES:
            raise ValueError(
                f"tasks {self.a}, {self.b}: measure {self.measure!r} is not one of "
                f"{', '.join(REP_MEASURES)}"
            )
        for name in ("cka_min", "grad_cosine", "conflict_rate"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"tasks {self.a}, {self.b}: {name} must be finite")
        if self.raw_cka_min is not None and not math.isfinite(self.raw_cka_min):
            raise ValueError(f"tasks {self.a}, {self.b}: raw_cka_min must be finite")
        if not 0.0 <= self.conflict_rate <= 1.0:
            raise ValueError(
                f"tasks {self.a}, {self.b}: conflict rate {self.conflict_rate} is not in [0, 1]"
            )
        if self.cka_min_layer is None:
            if self.measure != "partial_cka":
                raise ValueError(f"tasks {self.a}, {self.b}: a CKA minimum needs its layer")
        elif self.cka_min_layer < 0:
            raise ValueError(f"tasks {self.a}, {self.b}: layer {self.cka_min_layer} is negative")

    @property
    def cka_judged(self) -> float:
        """The CKA the verdict reads: ``cka_min``, or 1.0 (CKA's maximum) when waived."""
        return 1.0 if self.cka_waived else self.cka_min

    @property
    def affinity(self) -> float:
        """Pair affinity used for tie-breaks: 0.5 * representation + 0.5 * grad_cosine.

        The representation term is ``cka_judged``, except for a partial CKA that reads no layer
        (neither model moved far enough at a shared layer; ``cka_min_layer`` None): its verdict
        reads 1.0, but as a closeness 1.0 would rank every such pair first and leave ties between
        them to gradient cosines near 0, so the term reads the pair's plain min CKA
        (``raw_cka_min``) where it is known. Judged on fresh planted data before adoption
        (``bench/results/planted_sweep_2_prereg.json``). Both terms are on a cosine-like scale
        (CKA in [0, 1], partial CKA and cosine in [-1, 1]); the conflict rate is left out because
        it is a threshold condition, not a measure of closeness.
        """
        rep = self.cka_judged
        unread = self.measure == "partial_cka" and self.cka_min_layer is None
        if unread and not self.cka_waived and self.raw_cka_min is not None:
            rep = self.raw_cka_min
        return 0.5 * rep + 0.5 * self.grad_cosine

    @property
    def label(self) -> str:
        """The measure's name in evidence sentences: "CKA" or "partial CKA"."""
        return REP_MEASURES[self.measure]

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> PairEvidence:
        """The evidence of a pair from its entry in a recommendation's ``pairs``: the measure its
        ``rep_measure`` names (``cka_min``, or ``partial_cka_min``; "cka" when absent)."""
        measure = report.get("rep_measure", "cka")
        prefix = "partial_cka" if measure == "partial_cka" else "cka"
        return cls(
            a=report["tasks"][0],
            b=report["tasks"][1],
            cka_min=report[f"{prefix}_min"],
            cka_min_layer=report[f"{prefix}_min_layer"],
            grad_cosine=report["grad_cosine"],
            conflict_rate=report["conflict_rate"],
            cka_waived=bool(report.get("cka_waived", False)),
            measure=measure,
            raw_cka_min=report.get("cka_min") if measure == "partial_cka" else None,
        )

    def passes(self, th: Thresholds) -> bool:
        """Whether the pair meets all three thresholds (the CKA one always, when waived)."""
        return (
            self.cka_judged >= th.tau_rep
            and self.grad_cosine >= th.tau_grad
            and self.conflict_rate <= th.rho
        )


def _fmt_vs(value: float, threshold: float) -> tuple[str, str]:
    """Two decimals, or more where two would print the value and the threshold alike; the
    threshold with as many as it needs to print exactly (0.175, not 0.17)."""
    exact = 2
    while exact < 6 and float(f"{threshold:.{exact}f}") != threshold:
        exact += 1
    for digits in range(2, 7):
        v, t = f"{value:.{digits}f}", f"{threshold:.{max(digits, exact)}f}"
        if f"{value:.{digits}f}" != f"{threshold:.{digits}f}" or value == threshold:
            return v, t
    return repr(value), repr(threshold)


def _pair_misses(ev: PairEvidence, th: Thresholds) -> list[tuple[float, str]]:
    """(amount missed, sentence) for each failing condition, in condition order."""
    misses: list[tuple[float, str]] = []
    if ev.cka_judged < th.tau_rep:
        v, t = _fmt_vs(ev.cka_min, th.tau_rep)
        misses.append(
            (
                th.tau_rep - ev.cka_min,
                f"tasks {ev.a}, {ev.b}: {_where(ev)} {ev.label} {v} < {t}",
            )
        )
    if ev.grad_cosine < th.tau_grad:
        v, t = _fmt_vs(ev.grad_cosine, th.tau_grad)
        misses.append(
            (th.tau_grad - ev.grad_cosine, f"tasks {ev.a}, {ev.b}: gradient cosine {v} < {t}")
        )
    if ev.conflict_rate > th.rho:
        v, t = _fmt_vs(ev.conflict_rate, th.rho)
        misses.append((ev.conflict_rate - th.rho, f"tasks {ev.a}, {ev.b}: conflict rate {v} > {t}"))
    return misses


def pair_failures(ev: PairEvidence, th: Thresholds) -> list[str]:
    """One sentence per failing condition of the pair (CKA, gradient cosine, conflict rate order);
    empty when the pair passes. Example: ``"tasks A, B: layer 6 CKA 0.41 < 0.60"``."""
    return [sentence for _, sentence in _pair_misses(ev, th)]


def pair_shortfall(ev: PairEvidence, th: Thresholds) -> float:
    """Total amount by which the pair misses its thresholds, 0 when it passes:
    ``(tau_rep - cka_judged)^+ + (tau_grad - grad_cosine)^+ + (conflict_rate - rho)^+``."""
    return (
        max(0.0, th.tau_rep - ev.cka_judged)
        + max(0.0, th.tau_grad - ev.grad_cosine)
        + max(0.0, ev.conflict_rate - th.rho)
    )


def pair_margin(ev: PairEvidence, th: Thresholds) -> float:
    """Smallest pass margin of the pair, in the metrics' own units:
    ``min(cka_judged - tau_rep, grad_cosine - tau_grad, rho - conflict_rate)``; >= 0 iff it
    passes."""
    return min(ev.cka_judged - th.tau_rep, ev.grad_cosine - th.tau_grad, th.rho - ev.conflict_rate)


class PairTable:
    """The evidence of every pair of distinct tasks, looked up by unordered pair."""

    def __init__(self, tasks: Sequence[str], pairs: Iterable[PairEvidence]) -> None:
        self.tasks: tuple[str, ...] = tuple(tasks)
        position = _positions(self.tasks)
        self._pairs: dict[frozenset[str], PairEvidence] = {}
        for ev in pairs:
            for name in (ev.a, ev.b):
                if name not in position:
                    raise ValueError(f"pair ({ev.a}, {ev.b}) names unknown task {name!r}")
            key = frozenset((ev.a, ev.b))
            if key in self._pairs:
                raise ValueError(f"pair ({ev.a}, {ev.b}) is given more than once")
            if position[ev.a] > position[ev.b]:
                ev = replace(ev, a=ev.b, b=ev.a)
            self._pairs[key] = ev
        for i, a in enumerate(self.tasks):
            for b in self.tasks[i + 1 :]:
                if frozenset((a, b)) not in self._pairs:
                    raise ValueError(f"pair ({a}, {b}) is missing")

    @classmethod
    def from_pairs(cls, tasks: Sequence[str], pairs: Iterable[PairEvidence]) -> PairTable:
        """Build a table, checking that every pair of distinct tasks is given exactly once (in
        either orientation) and that no pair names an unknown task (ValueError otherwise)."""
        return cls(tasks, pairs)

    def get(self, a: str, b: str) -> PairEvidence:
        """The evidence of pair {a, b}, oriented so that ``.a == a`` and ``.b == b``.

        KeyError for an unknown task, ValueError when ``a == b``."""
        if a == b:
            raise ValueError(f"task {a!r} is not paired with itself")
        try:
            ev = self._pairs[frozenset((a, b))]
        except KeyError:
            raise KeyError(f"no evidence for pair ({a}, {b})") from None
        return ev if ev.a == a else replace(ev, a=a, b=b)

    def __getitem__(self, pair: tuple[str, str]) -> PairEvidence:
        return self.get(*pair)

    def __contains__(self, pair: object) -> bool:
        if not isinstance(pair, tuple) or len(pair) != 2:
            return False
        return frozenset(pair) in self._pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[PairEvidence]:
        """The pairs in task order: (t0, t1), (t0, t2), ..., (t1, t2), ..."""
        for i, a in enumerate(self.tasks):
            for b in self.tasks[i + 1 :]:
                yield self._pairs[frozenset((a, b))]


def _positions(tasks: Sequence[str]) -> dict[str, int]:
    position: dict[str, int] = {}
    for i, name in enumerate(tasks):
        if name in position:
            raise ValueError(f"task {name!r} is listed twice")
        position[name] = i
    return position


# --------------------------------------------------------------------------------------------------
# Group verdicts
# --------------------------------------------------------------------------------------------------


@dataclass
class GroupVerdict:
    """The verdict on one group: does one MTL model for it match its STL models?

    ``score`` is the mean pair affinity within the group; ``margin`` the smallest pass margin over
    its pairs, ``min(cka_judged - tau_rep, grad_cosine - tau_grad, rho - conflict_rate)`` in the
    metrics' own units (>= 0 iff the group passes); ``shortfall`` the sum of the pairs'
    shortfalls. score and margin are None for a singleton, whose shortfall is 0.
    """

    tasks: list[str]
    matches: bool
    evidence: list[str]
    score: float | None
    margin: float | None = None
    shortfall: float = 0.0


def judge_group(tasks: Sequence[str], table: PairTable, th: Thresholds) -> GroupVerdict:
    """The verdict on a group, with the evidence that limits it (tasks kept in the given order).

    Passing group: one sentence naming the weakest value of each condition. Failing group: one
    sentence per failing condition per pair, worst first (by the amount missed, in the metric's
    units; ties in pair order, then CKA, gradient cosine, conflict rate).
    """
    names = list(tasks)
    if not names:
        raise ValueError("a group needs at least one task")
    _positions(names)
    for name in names:
        if name not in table.tasks:
            raise KeyError(f"unknown task {name!r}")
    if len(names) == 1:
        return GroupVerdict(names, True, [_SINGLETON_EVIDENCE], None, None, 0.0)

    pairs = [table.get(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    score = math.fsum(ev.affinity for ev in pairs) / len(pairs)
    margin = min(pair_margin(ev, th) for ev in pairs)
    shortfall = math.fsum(pair_shortfall(ev, th) for ev in pairs)
    misses = [
        (-amount, p, c, sentence)
        for p, ev in enumerate(pairs)
        for c, (amount, sentence) in enumerate(_pair_misses(ev, th))
    ]
    if misses:
        evidence = [sentence for *_, sentence in sorted(misses)]
        return GroupVerdict(names, False, evidence, score, margin, shortfall)
    return GroupVerdict(names, True, [_passing_sentence(pairs, th)], score, margin, shortfall)


def _where(ev: PairEvidence) -> str:
    """Where the pair's minimum lies: "layer 4", or, for a partial CKA no layer of which counts,
    "no layer where both models moved" (its value is then 1.0)."""
    if ev.cka_min_layer is None:
        return "no layer where both models moved:"
    return f"layer {ev.cka_min_layer}"


def _passing_sentence(pairs: list[PairEvidence], th: Thresholds) -> str:
    read = [ev for ev in pairs if not ev.cka_waived]
    waived = len(pairs) - len(read)
    grad = min(pairs, key=lambda ev: ev.grad_cosine)
    conflict = max(pairs, key=lambda ev: ev.conflict_rate)
    g_v, g_t = _fmt_vs(grad.grad_cosine, th.tau_grad)
    r_v, r_t = _fmt_vs(conflict.conflict_rate, th.rho)
    label = pairs[0].label
    if read:
        cka = min(read, key=lambda ev: ev.cka_min)
        c_v, c_t = _fmt_vs(cka.cka_min, th.tau_rep)
        at = (
            "no layer where both models moved"
            if cka.cka_min_layer is None
            else f"layer {cka.cka_min_layer}"
        )
    if len(pairs) == 1:
        cka_part = (
            f"min-layer {label} {c_v} ({at}) >= {c_t}"
            if read
            else f"{label} not read (a task's single-task model learnt little)"
        )
        return (
            f"the pair passes: {cka_part}; gradient cosine {g_v} >= {g_t}; "
            f"conflict rate {r_v} <= {r_t}"
        )
    if not read:
        cka_part = f"{label} not read (every pair has a task whose single-task model learnt little)"
    else:
        cka_part = f"lowest min-layer {label} {c_v} ({cka.a}, {cka.b} at {at}) >= {c_t}"
        if waived:
            cka_part += (
                f" (not read on {waived} pair{'s' if waived > 1 else ''} with a task whose "
                "single-task model learnt little)"
            )
    return (
        f"all {len(pairs)} pairs pass: {cka_part}; "
        f"lowest gradient cosine {g_v} ({grad.a}, {grad.b}) >= {g_t}; "
        f"highest conflict rate {r_v} ({conflict.a}, {conflict.b}) <= {r_t}"
    )


def judge_grouping(
    grouping: Sequence[Sequence[str]], table: PairTable, th: Thresholds
) -> list[GroupVerdict]:
    """The verdict on each group of a grouping, in its order."""
    return [judge_group(group, table, th) for group in grouping]


# --------------------------------------------------------------------------------------------------
# Set partitions
# --------------------------------------------------------------------------------------------------


def set_partitions(items: Sequence[T]) -> Iterator[list[list[T]]]:
    """All set partitions of ``items`` (by position), Bell(n) of them, in a deterministic order.

    Each partition lists its blocks by their first item's position, items within a block in input
    order. The first partition is the single block, the last all singletons. For no items there is
    exactly one partition, the empty one (``[]``), so that the count is Bell(0) = 1.
    """
    seq = list(items)
    blocks: list[list[T]] = []

    def extend(k: int) -> Iterator[list[list[T]]]:
        if k == len(seq):
            yield [list(block) for block in blocks]
            return
        for block in blocks:
            block.append(seq[k])
            yield from extend(k + 1)
            block.pop()
        blocks.append([seq[k]])
        yield from extend(k + 1)
        blocks.pop()

    return extend(0)


def bell_number(n: int) -> int:
    """The number of set partitions of n items (Bell triangle)."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]


# --------------------------------------------------------------------------------------------------
# Search internals: tasks are bit positions, groups are bitmasks
# --------------------------------------------------------------------------------------------------

# (any failing group, rounded shortfall, number of groups, -rounded mean affinity or +inf)
_Key = tuple[bool, float, int, float]


class _GroupStats(NamedTuple):
    affinity: float  # sum of pair affinities
    pairs: int
    shortfall: float  # sum of pair shortfalls
    passes: bool


def _bits(mask: int) -> list[int]:
    out: list[int] = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _canon(groups: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """Groups as tuples of task positions, ordered by first task: the final tie-break."""
    return tuple(tuple(_bits(g)) for g in sorted(groups, key=lambda g: g & -g))


class _Instance:
    """Pair matrices of one search, and per-group statistics cached by bitmask."""

    def __init__(self, tasks: Sequence[str], table: PairTable, th: Thresholds) -> None:
        n = len(tasks)
        self.n = n
        self.affinity = [[0.0] * n for _ in range(n)]
        self.shortfall = [[0.0] * n for _ in range(n)]
        # compatible[i]: i itself and every task whose pair with i passes
        self.compatible = [1 << i for i in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                ev = table.get(tasks[i], tasks[j])
                self.affinity[i][j] = self.affinity[j][i] = ev.affinity
                self.shortfall[i][j] = self.shortfall[j][i] = pair_shortfall(ev, th)
                if ev.passes(th):
                    self.compatible[i] |= 1 << j
                    self.compatible[j] |= 1 << i
        self._stats: dict[int, _GroupStats] = {}

    def stats(self, group: int) -> _GroupStats:
        st = self._stats.get(group)
        if st is None:
            members = _bits(group)
            aff = 0.0
            short = 0.0
            passes = True
            for x, i in enumerate(members):
                if group & ~self.compatible[i]:
                    passes = False
                row_a, row_s = self.affinity[i], self.shortfall[i]
                for j in members[x + 1 :]:
                    aff += row_a[j]
                    short += row_s[j]
            k = len(members)
            st = _GroupStats(aff, k * (k - 1) // 2, short, passes)
            self._stats[group] = st
        return st

    def passes(self, group: int) -> bool:
        return self.stats(group).passes

    def key(self, groups: Iterable[int]) -> _Key:
        """The ordering key of a grouping; a function of the partition alone (order-free sums)."""
        affs: list[float] = []
        shorts: list[float] = []
        n_pairs = 0
        n_groups = 0
        failing = False
        for g in groups:
            st = self.stats(g)
            n_groups += 1
            n_pairs += st.pairs
            affs.append(st.affinity)
            shorts.append(st.shortfall)
            failing = failing or not st.passes
        mean = -round(math.fsum(affs) / n_pairs, _ROUND) if n_pairs else math.inf
        return (failing, round(math.fsum(shorts), _ROUND), n_groups, mean)

    def mean_gain(self, task: int, group: int) -> float:
        members = _bits(group)
        row = self.affinity[task]
        return sum(row[j] for j in members) / len(members)

    def added_shortfall(self, task: int, group: int) -> float:
        row = self.shortfall[task]
        return sum(row[j] for j in _bits(group))


def _better(key: _Key, groups: list[int], best_key: _Key | None, best: list[int] | None) -> bool:
    if best_key is None or best is None or key < best_key:
        return True
    return key == best_key and _canon(groups) < _canon(best)


# --------------------------------------------------------------------------------------------------
# Exhaustive search
# --------------------------------------------------------------------------------------------------


def _exhaustive_feasible(inst: _Instance) -> list[int]:
    """The best grouping whose groups all pass: fewest groups, then highest mean affinity."""
    n = inst.n
    full = (1 << n) - 1
    passes = [inst.passes(m) for m in range(full + 1)]
    best: list[int] | None = None
    best_key: _Key | None = None
    groups: list[int] = []

    def place(remaining: int) -> None:
        nonlocal best, best_key
        if remaining == 0:
            key = inst.key(groups)
            if _better(key, groups, best_key, best):
                best, best_key = list(groups), key
            return
        if best_key is not None and len(groups) + 1 > best_key[2]:
            return
        low = remaining & -remaining
        rest = remaining ^ low
        sub = rest
        while True:  # submasks of rest, largest first, so that few-group answers come early
            g = sub | low
            if passes[g]:
                groups.append(g)
                place(remaining ^ g)
                groups.pop()
            if sub == 0:
                break
            sub = (sub - 1) & rest

    place(full)
    assert best is not None  # all singletons always pass
    return best


def _exhaustive_budget(inst: _Instance, max_groups: int) -> list[int]:
    """The least-violating grouping with at most max_groups groups (budget key)."""
    n = inst.n
    full = (1 << n) - 1
    shortfall = [inst.stats(m).shortfall for m in range(full + 1)]
    best: list[int] | None = None
    best_key: _Key | None = None
    groups: list[int] = []

    def place(remaining: int, partial: float) -> None:
        nonlocal best, best_key
        if remaining == 0:
            key = inst.key(groups)
            if _better(key, groups, best_key, best):
                best, best_key = list(groups), key
            return
        if len(groups) >= max_groups:
            return
        if best_key is not None and partial > best_key[1] + 1e-9:
            return  # shortfall only grows as groups are added
        if len(groups) == max_groups - 1:
            groups.append(remaining)
            place(0, partial + shortfall[remaining])
            groups.pop()
            return
        low = remaining & -remaining
        rest = remaining ^ low
        sub = rest
        while True:
            g = sub | low
            groups.append(g)
            place(remaining ^ g, partial + shortfall[g])
            groups.pop()
            if sub == 0:
                break
            sub = (sub - 1) & rest

    place(full, 0.0)
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------
# Heuristic search
# --------------------------------------------------------------------------------------------------


# Running totals of a grouping: (affinity sum, pair count, shortfall sum, failing groups, groups)
_Totals = tuple[float, int, float, int, int]


class _Scan:
    """One neighbourhood scan: keeps the best strictly improving neighbour.

    A neighbour replaces the groups at some positions by new groups. It is screened with running
    sums (cheap, but float-noisy) and confirmed with the exact, order-free key; the screen lets near
    ties through, so noise never hides a real improvement.
    """

    def __init__(
        self,
        inst: _Instance,
        groups: list[int],
        key: _Key,
        require_passing: bool,
        max_groups: int | None,
    ) -> None:
        self.inst = inst
        self.groups = groups
        self.require_passing = require_passing
        self.max_groups = max_groups
        self.best_key = key
        self.best: tuple[list[int], _Key] | None = None
        self.totals = self._add((0.0, 0, 0.0, 0, 0), groups, 1)

    def _add(self, totals: _Totals, groups: Iterable[int], sign: int) -> _Totals:
        aff, pairs, short, failing, n = totals
        for g in groups:
            st = self.inst.stats(g)
            aff += sign * st.affinity
            pairs += sign * st.pairs
            short += sign * st.shortfall
            failing += sign * (not st.passes)
            n += sign
        return aff, pairs, short, failing, n

    def without(self, removed: Sequence[int]) -> _Totals:
        return self._add(self.totals, (self.groups[k] for k in removed), -1)

    def offer(
        self, removed: Sequence[int], added: Sequence[int], base: _Totals | None = None
    ) -> None:
        """Consider replacing the groups at positions ``removed`` by ``added`` (empty groups in
        ``added`` are dropped); ``base`` is ``without(removed)`` when the caller has it."""
        stats = self.inst.stats
        if base is None:
            base = self.without(removed)
        aff, pairs, short, failing, n = base
        for g in added:
            if g:
                st = stats(g)
                if not st.passes:
                    if self.require_passing:
                        return
                    failing += 1
                aff += st.affinity
                pairs += st.pairs
                short += st.shortfall
                n += 1
        if self.max_groups is not None and n > self.max_groups:
            return
        best = self.best_key
        if (failing > 0) != best[0]:
            if failing > 0:
                return
        elif short > best[1] + 1e-9:
            return
        elif short >= best[1] - 1e-9:
            if n > best[2]:
                return
            if n == best[2]:
                mean = -aff / pairs if pairs else math.inf
                if mean > best[3] + 1e-9:
                    return
        cand = [g for k, g in enumerate(self.groups) if k not in removed]
        cand.extend(g for g in added if g)
        key = self.inst.key(cand)
        if key < best:
            self.best_key = key
            self.best = (cand, key)


class _Heuristic:
    """Greedy starts + group elimination + local search; deterministic for a given seed."""

    def __init__(self, inst: _Instance, restarts: int, seed: int) -> None:
        self.inst = inst
        self.orderings = self._orderings(restarts, seed)
        self.kicks = 2 * restarts
        self.seed = seed

    def _orderings(self, restarts: int, seed: int) -> list[list[int]]:
        inst = self.inst
        n = inst.n
        degree = [inst.compatible[i].bit_count() - 1 for i in range(n)]
        closeness = [
            sum(inst.affinity[i][j] for j in _bits(inst.compatible[i] & ~(1 << i)))
            for i in range(n)
        ]
        base = list(range(n))
        candidates = [
            sorted(base, key=lambda i: (degree[i], i)),  # most constrained first
            sorted(base, key=lambda i: (-degree[i], i)),
            sorted(base, key=lambda i: (-closeness[i], i)),
            base,
        ]
        rng = random.Random(seed)
        for _ in range(restarts):
            perm = list(base)
            rng.shuffle(perm)
            candidates.append(perm)
        seen: set[tuple[int, ...]] = set()
        unique: list[list[int]] = []
        for order in candidates:
            if tuple(order) not in seen:
                seen.add(tuple(order))
                unique.append(order)
        return unique

    # ---- feasible mode: every group passes; minimise (n_groups, -mean affinity) ----

    def feasible(self) -> list[list[int]]:
        """A locally optimal passing grouping from each start (three-group re-partitions included:
        with passing groups required they are cheap)."""
        results = []
        for order in self.orderings:
            groups = self._greedy(order)
            groups = self._local_search(groups, require_passing=True, max_groups=None, polish=True)
            results.append(groups)
        return results

    def _greedy(self, order: list[int]) -> list[int]:
        inst = self.inst
        groups: list[int] = []
        for task in order:
            options = [k for k, g in enumerate(groups) if g & ~inst.compatible[task] == 0]
            if options:
                k = max(options, key=lambda k: (inst.mean_gain(task, groups[k]), -k))
                groups[k] |= 1 << task
            else:
                groups.append(1 << task)
        return groups

    def _eliminate(self, groups: list[int]) -> list[int] | None:
        """Try to dissolve one group (smallest first) into the others, all groups still passing."""
        order = sorted(range(len(groups)), key=lambda k: (groups[k].bit_count(), k))
        for k in order:
            others = [g for j, g in enumerate(groups) if j != k]
            if self._redistribute(_bits(groups[k]), others):
                return others
        return None

    def _redistribute(self, members: list[int], others: list[int]) -> bool:
        """Place every member into ``others`` (in place), passing groups only; one-step ejection
        chains (move one blocking task elsewhere) when a member fits nowhere."""
        inst = self.inst
        pending = list(members)
        while pending:
            fits = {
                x: [j for j, g in enumerate(others) if g & ~inst.compatible[x] == 0]
                for x in pending
            }
            x = min(pending, key=lambda x: (len(fits[x]), x))
            pending.remove(x)
            if fits[x]:
                j = max(fits[x], key=lambda j: (inst.mean_gain(x, others[j]), -j))
                others[j] |= 1 << x
                continue
            if not self._eject_for(x, others):
                return False
        return True

    def _eject_for(self, x: int, others: list[int]) -> bool:
        inst = self.inst
        for j, g in enumerate(others):
            blocking = g & ~inst.compatible[x]
            if blocking.bit_count() != 1:
                continue
            y = blocking.bit_length() - 1
            for j2, g2 in enumerate(others):
                if j2 != j and g2 & ~inst.compatible[y] == 0:
                    others[j] = (g ^ blocking) | (1 << x)
                    others[j2] = g2 | blocking
                    return True
        return False

    # ---- local search shared by both modes ----

    def _local_search(
        self,
        groups: list[int],
        *,
        require_passing: bool,
        max_groups: int | None,
        polish: bool = False,
    ) -> list[int]:
        """Hill-climb to a local optimum (strict key improvements only, so it terminates).
        ``polish`` adds the costlier three-group re-partitions."""
        inst = self.inst
        groups = [g for g in groups if g]
        key = inst.key(groups)
        while True:
            if require_passing:
                reduced = self._eliminate(groups)
                if reduced is not None:
                    groups, key = reduced, inst.key(reduced)
                    continue
            found = self._improve(groups, key, require_passing, max_groups, polish)
            if found is None:
                return groups
            groups, key = found

    def _improve(
        self,
        groups: list[int],
        key: _Key,
        require_passing: bool,
        max_groups: int | None,
        polish: bool,
    ) -> tuple[list[int], _Key] | None:
        """The best neighbour in the first neighbourhood that has an improving one: single-task
        moves, then swaps, then two-group re-partitions, then (polish) three-group ones."""
        may_open = not require_passing and (max_groups is None or len(groups) < max_groups)
        scan = _Scan(self.inst, groups, key, require_passing, max_groups)
        self._moves(scan, may_open)
        if scan.best is None:
            self._swaps(scan)
        if scan.best is None:
            self._repartitions(scan, 2, _REPARTITION_LIMIT, may_open)
        if scan.best is None and polish:
            self._repartitions(scan, 3, _REPARTITION3_LIMIT, False)
        return scan.best

    def _moves(self, scan: _Scan, may_open: bool) -> None:
        """Move one task into another group (or a new one, when that is allowed)."""
        groups = scan.groups
        for k, g in enumerate(groups):
            for task in _bits(g):
                bit = 1 << task
                source = g ^ bit
                for j, h in enumerate(groups):
                    if j != k:
                        scan.offer((k, j), (source, h | bit))
                if may_open and source:
                    scan.offer((k,), (source, bit))

    def _swaps(self, scan: _Scan) -> None:
        """Exchange two tasks between two groups."""
        groups = scan.groups
        for k in range(len(groups)):
            for j in range(k + 1, len(groups)):
                g, h = groups[k], groups[j]
                for x in _bits(g):
                    for y in _bits(h):
                        swap = (1 << x) | (1 << y)
                        scan.offer((k, j), (g ^ swap, h ^ swap))

    def _repartitions(self, scan: _Scan, arity: int, limit: int, may_open: bool) -> None:
        """Re-partition the union of ``arity`` groups into at most ``arity`` groups (fewer merges
        them); when a new group may be opened, also split one group in two. Unions of more than
        ``limit`` tasks are skipped (2^(u-1) splits for two groups). When groups must pass, a
        group none of whose tasks is compatible with a task of the others cannot change, so such
        combinations are skipped."""
        groups = scan.groups
        compatible = self.inst.compatible
        reach = []  # tasks outside each group that pass with one of its tasks
        for g in groups:
            r = 0
            for task in _bits(g):
                r |= compatible[task]
            reach.append(r & ~g)
        plans = [(chosen, arity) for chosen in combinations(range(len(groups)), arity)]
        if may_open:
            plans += [((k,), 2) for k in range(len(groups))]
        for chosen, blocks in plans:
            union = 0
            for k in chosen:
                union |= groups[k]
            if union.bit_count() > limit:
                continue
            if scan.require_passing and any(reach[k] & union == 0 for k in chosen):
                continue
            base = scan.without(chosen)
            for split in self._splits(_bits(union), blocks, scan.require_passing):
                scan.offer(chosen, split, base)

    def _splits(
        self, members: list[int], max_blocks: int, require_passing: bool
    ) -> Iterator[list[int]]:
        """Every partition of ``members`` into at most ``max_blocks`` groups (passing groups only
        when required), each once (restricted growth order)."""
        compatible = self.inst.compatible
        blocks: list[int] = []

        def extend(index: int) -> Iterator[list[int]]:
            if index == len(members):
                yield list(blocks)
                return
            task = members[index]
            bit = 1 << task
            for b, block in enumerate(blocks):
                if require_passing and block & ~compatible[task]:
                    continue
                blocks[b] = block | bit
                yield from extend(index + 1)
                blocks[b] = block
            if len(blocks) < max_blocks:
                blocks.append(bit)
                yield from extend(index + 1)
                blocks.pop()

        return extend(0)

    def polish(self, groups: list[int], max_groups: int | None) -> list[int]:
        """Iterated local search on the best start of a mode (passing groups only when
        ``max_groups`` is None, else the budget mode): ``kicks`` times, move three random tasks to
        random groups (groups they pass with, in the passing mode; a new group where allowed),
        climb again, and keep the result when its key is better. Kicks escape optima that only a
        coordinated change of four or more groups improves. In the budget mode the climb from the
        start first adds three-group re-partitions (costly without the pass requirement, so they
        are not run for every start)."""
        inst = self.inst
        require_passing = max_groups is None
        rng = random.Random(3 * self.seed + (1 if require_passing else 2))  # one stream per mode
        best = self._local_search(
            groups, require_passing=require_passing, max_groups=max_groups, polish=True
        )
        best_key = inst.key(best)
        for _ in range(self.kicks):
            kicked = list(best)
            for task in rng.sample(range(inst.n), min(3, inst.n)):
                bit = 1 << task
                source = next(k for k, g in enumerate(kicked) if g & bit)
                targets = [
                    k
                    for k, g in enumerate(kicked)
                    if k != source and not (require_passing and g & ~inst.compatible[task])
                ]
                if max_groups is None or len(kicked) < max_groups:
                    targets.append(len(kicked))
                if not targets:
                    continue
                target = rng.choice(targets)
                kicked[source] ^= bit
                if target == len(kicked):
                    kicked.append(bit)
                else:
                    kicked[target] |= bit
                kicked = [g for g in kicked if g]
            found = self._local_search(
                kicked, require_passing=require_passing, max_groups=max_groups
            )
            found_key = inst.key(found)
            if found_key < best_key:
                best, best_key = found, found_key
        return best

    # ---- budget mode: at most max_groups groups; minimise the budget key ----

    def budget(self, starts: list[list[int]], max_groups: int) -> list[list[int]]:
        """A locally optimal grouping with at most max_groups groups from each start."""
        seeds = {_canon(s): s for s in (self._merge_down(s, max_groups) for s in starts)}
        for order in self.orderings:
            greedy = self._greedy_budget(order, max_groups)
            seeds.setdefault(_canon(greedy), greedy)
        return [
            self._local_search(groups, require_passing=False, max_groups=max_groups)
            for groups in seeds.values()  # each distinct start once, in first-seen order
        ]

    def _merge_down(self, groups: list[int], max_groups: int) -> list[int]:
        """Merge the two groups whose merge adds the least shortfall (then keeps the highest mean
        affinity) until at most max_groups remain."""
        inst = self.inst
        groups = list(groups)
        while len(groups) > max_groups:
            stats = [inst.stats(g) for g in groups]
            aff = sum(st.affinity for st in stats)
            pairs = sum(st.pairs for st in stats)
            short = sum(st.shortfall for st in stats)
            best: tuple[float, float, int, int] | None = None
            for k in range(len(groups)):
                for j in range(k + 1, len(groups)):
                    merged = inst.stats(groups[k] | groups[j])
                    st_k, st_j = stats[k], stats[j]
                    new_short = short + merged.shortfall - st_k.shortfall - st_j.shortfall
                    new_aff = aff + merged.affinity - st_k.affinity - st_j.affinity
                    new_pairs = pairs + merged.pairs - st_k.pairs - st_j.pairs
                    option = (new_short, -new_aff / new_pairs, k, j)
                    if best is None or option < best:
                        best = option
            assert best is not None
            _, _, k, j = best
            groups = [g for i, g in enumerate(groups) if i not in (k, j)] + [groups[k] | groups[j]]
        return groups

    def _greedy_budget(self, order: list[int], max_groups: int) -> list[int]:
        inst = self.inst
        groups: list[int] = []
        for task in order:
            options = [k for k, g in enumerate(groups) if g & ~inst.compatible[task] == 0]
            if options:
                k = max(options, key=lambda k: (inst.mean_gain(task, groups[k]), -k))
                groups[k] |= 1 << task
            elif len(groups) < max_groups:
                groups.append(1 << task)
            else:
                k = min(
                    range(len(groups)),
                    key=lambda k: (
                        inst.added_shortfall(task, groups[k]),
                        -inst.mean_gain(task, groups[k]),
                        k,
                    ),
                )
                groups[k] |= 1 << task
        return groups


def _pick(inst: _Instance, results: list[list[int]]) -> list[int]:
    best: list[int] | None = None
    best_key: _Key | None = None
    for groups in results:
        key = inst.key(groups)
        if _better(key, groups, best_key, best):
            best, best_key = groups, key
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------
# Public search API
# --------------------------------------------------------------------------------------------------


@dataclass
class GroupingResult:
    """The recommended grouping and how it was found.

    ``grouping`` is in canonical order: tasks within a group in the input task order, groups ordered
    by their first task's input position. ``feasible``: every non-singleton group passes.
    ``within_budget``: the best passing grouping fits the budget; False only when ``max_groups`` is
    below the number of groups that grouping needs, so that a violating grouping was returned (then
    ``feasible`` is False too and a note says so; always True without a budget). ``mean_affinity``
    is the mean affinity over all within-group pairs (None when all groups are singletons),
    ``shortfall`` the sum of the within-group pairs' shortfalls, ``verdicts`` the verdict on each
    group in ``grouping`` order.
    """

    grouping: list[list[str]]
    method: str  # "exhaustive" | "heuristic"
    feasible: bool
    within_budget: bool
    notes: list[str]
    mean_affinity: float | None
    shortfall: float = 0.0
    verdicts: list[GroupVerdict] = field(default_factory=list)

    @property
    def n_groups(self) -> int:
        return len(self.grouping)


def _check_inputs(tasks: Sequence[str], table: PairTable, max_groups: int | None) -> list[str]:
    names = list(tasks)
    if not names:
        raise ValueError("at least one task is needed")
    _positions(names)
    for name in names:
        if name not in table.tasks:
            raise ValueError(f"task {name!r} has no pair evidence")
    if max_groups is not None and max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    return names


def _fmt_group(names: Sequence[str]) -> str:
    return "{" + ", ".join(names) + "}"


def _result(
    names: list[str],
    groups: list[int],
    table: PairTable,
    th: Thresholds,
    *,
    method: str,
    notes: list[str],
    max_groups: int | None,
    unbudgeted_groups: int,
) -> GroupingResult:
    grouping = [[names[i] for i in members] for members in _canon(groups)]
    verdicts = judge_grouping(grouping, table, th)
    pairs = [
        table.get(a, b) for group in grouping for i, a in enumerate(group) for b in group[i + 1 :]
    ]
    mean = math.fsum(ev.affinity for ev in pairs) / len(pairs) if pairs else None
    feasible = all(v.matches for v in verdicts)
    notes = list(notes)
    if max_groups is not None:
        if feasible:
            notes.append(
                f"max_groups={max_groups} did not bind: the grouping uses {len(grouping)} groups"
            )
        else:
            failing = "; ".join(
                f"{_fmt_group(v.tasks)} (shortfall {v.shortfall:.2f})"
                for v in verdicts
                if not v.matches
            )
            notes.append(
                f"max_groups={max_groups} forced a partition in which some groups fail: {failing}; "
                f"without the budget the best passing grouping found has {unbudgeted_groups} groups"
            )
    return GroupingResult(
        grouping=grouping,
        method=method,
        feasible=feasible,
        within_budget=feasible,
        notes=notes,
        mean_affinity=mean,
        shortfall=math.fsum(v.shortfall for v in verdicts),
        verdicts=verdicts,
    )


def exhaustive_grouping(
    tasks: Sequence[str],
    table: PairTable,
    th: Thresholds,
    *,
    max_groups: int | None = None,
) -> GroupingResult:
    """The optimal grouping by exhaustive search over set partitions (up to 12 tasks)."""
    names = _check_inputs(tasks, table, max_groups)
    if len(names) > EXHAUSTIVE_HARD_LIMIT:
        raise ValueError(
            f"exhaustive search is limited to {EXHAUSTIVE_HARD_LIMIT} tasks, got {len(names)}"
        )
    inst = _Instance(names, table, th)
    groups = _exhaustive_feasible(inst)
    unbudgeted = len(groups)
    if max_groups is not None and len(groups) > max_groups:
        groups = _exhaustive_budget(inst, max_groups)
    notes = [
        f"exhaustive search over the {bell_number(len(names)):,} set partitions of "
        f"{len(names)} tasks"
    ]
    return _result(
        names,
        groups,
        table,
        th,
        method="exhaustive",
        notes=notes,
        max_groups=max_groups,
        unbudgeted_groups=unbudgeted,
    )


def heuristic_grouping(
    tasks: Sequence[str],
    table: PairTable,
    th: Thresholds,
    *,
    max_groups: int | None = None,
    restarts: int = 16,
    seed: int = 0,
) -> GroupingResult:
    """A grouping by the deterministic heuristic (any number of tasks; not guaranteed optimal).

    ``restarts`` random task orderings drawn from ``random.Random(seed)`` are added to the four
    deterministic ones, and the best grouping of each mode gets 2 x ``restarts``
    iterated-local-search kicks. The same inputs always give the same answer."""
    names = _check_inputs(tasks, table, max_groups)
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    inst = _Instance(names, table, th)
    search = _Heuristic(inst, restarts, seed)
    starts = search.feasible()
    groups = search.polish(_pick(inst, starts), max_groups=None)
    unbudgeted = len(groups)
    if max_groups is not None and len(groups) > max_groups:
        groups = search.polish(_pick(inst, search.budget(starts, max_groups)), max_groups)
    notes = [
        f"heuristic search over {len(names)} tasks from {len(search.orderings)} deterministic "
        "starts (greedy insertion, group elimination, moves, swaps, re-partitions); "
        "not guaranteed optimal"
    ]
    return _result(
        names,
        groups,
        table,
        th,
        method="heuristic",
        notes=notes,
        max_groups=max_groups,
        unbudgeted_groups=unbudgeted,
    )


def recommend_grouping(
    tasks: Sequence[str],
    table: PairTable,
    th: Thresholds,
    *,
    max_groups: int | None = None,
    exhaustive_limit: int = 10,
) -> GroupingResult:
    """The recommended grouping: exhaustive up to ``exhaustive_limit`` tasks, heuristic beyond."""
    if not 0 <= exhaustive_limit <= EXHAUSTIVE_HARD_LIMIT:
        raise ValueError(
            f"exhaustive_limit must lie in [0, {EXHAUSTIVE_HARD_LIMIT}], got {exhaustive_limit}"
        )
    if len(tasks) <= exhaustive_limit:
        return exhaustive_grouping(tasks, table, th, max_groups=max_groups)
    return heuristic_grouping(tasks, table, th, max_groups=max_groups)


# --------------------------------------------------------------------------------------------------
# Candidates sent by the user
# --------------------------------------------------------------------------------------------------


@dataclass
class CandidateScore:
    """A user's candidate grouping scored like the recommendation.

    ``passes``: every group matches; ``n_models``: number of groups (added singletons included);
    ``mean_affinity``: over all within-group pairs (None when all groups are singletons);
    ``shortfall``: sum of the groups' shortfalls; ``best``: the best candidate (exactly one).
    """

    index: int
    groups: list[GroupVerdict]
    passes: bool
    n_models: int
    mean_affinity: float | None
    shortfall: float
    best: bool

    @property
    def grouping(self) -> list[list[str]]:
        return [list(v.tasks) for v in self.groups]


def normalize_candidate(
    candidate: Sequence[Sequence[str]], tasks: Sequence[str]
) -> list[list[str]]:
    """A candidate grouping as a full partition of ``tasks`` in canonical order.

    ValueError for an unknown task, a task named twice or an empty group (the message names the task
    or group). Tasks the candidate does not mention are added as singleton groups: a candidate says
    which tasks should share a model, and every other task keeps its single-task model.
    """
    position = _positions(list(tasks))
    seen: set[str] = set()
    groups: list[list[str]] = []
    for k, group in enumerate(candidate):
        if isinstance(group, str):
            raise ValueError(f"group {k} must be a list of task names, not the string {group!r}")
        members = list(group)
        if not members:
            raise ValueError(f"group {k} of the candidate is empty")
        for name in members:
            if name not in position:
                raise ValueError(f"unknown task {name!r} in candidate group {k}")
            if name in seen:
                raise ValueError(f"task {name!r} appears more than once in the candidate")
            seen.add(name)
        groups.append(sorted(members, key=position.__getitem__))
    groups.extend([name] for name in tasks if name not in seen)
    groups.sort(key=lambda g: position[g[0]])
    return groups


def _affinity_key(mean: float | None) -> float:
    return -round(mean, _ROUND) if mean is not None else math.inf


def _candidate_key(c: CandidateScore) -> tuple[bool, int, float, float, int]:
    return (
        not c.passes,
        c.n_models,
        _affinity_key(c.mean_affinity),
        round(c.shortfall, _ROUND),
        c.index,
    )


def score_candidates(
    candidates: Sequence[Sequence[Sequence[str]]],
    tasks: Sequence[str],
    table: PairTable,
    th: Thresholds,
) -> list[CandidateScore]:
    """Score each candidate (in input order) with per-group verdicts and mark exactly one best:
    passing first, then fewest models, then highest mean affinity, then lowest shortfall, then
    lowest index."""
    scores: list[CandidateScore] = []
    for index, candidate in enumerate(candidates):
        grouping = normalize_candidate(candidate, tasks)
        verdicts = judge_grouping(grouping, table, th)
        pairs = [
            table.get(a, b)
            for group in grouping
            for i, a in enumerate(group)
            for b in group[i + 1 :]
        ]
        scores.append(
            CandidateScore(
                index=index,
                groups=verdicts,
                passes=all(v.matches for v in verdicts),
                n_models=len(grouping),
                mean_affinity=(
                    math.fsum(ev.affinity for ev in pairs) / len(pairs) if pairs else None
                ),
                shortfall=math.fsum(v.shortfall for v in verdicts),
                best=False,
            )
        )
    if scores:
        min(scores, key=_candidate_key).best = True
    return scores


def grouping_beats(recommended: GroupingResult, best: CandidateScore) -> bool:
    """Whether the service's grouping is strictly better than the candidate by the candidate
    ordering (passing, fewest models, highest mean affinity, lowest shortfall)."""
    ours = (
        not recommended.feasible,
        len(recommended.grouping),
        _affinity_key(recommended.mean_affinity),
        round(recommended.shortfall, _ROUND),
    )
    return ours < _candidate_key(best)[:4]


# --------------------------------------------------------------------------------------------------
# Overall verdict
# --------------------------------------------------------------------------------------------------


def overall_verdict(grouping: Sequence[Sequence[str]], n_tasks: int) -> tuple[str, str]:
    """(kind, summary) of a grouping of ``n_tasks`` tasks.

    kind: "single_model" when one group holds all tasks (n_tasks >= 2), "single_task" when every
    group is a singleton (also n_tasks == 1), else "grouped". Summary examples: "one model for all 5
    tasks", "2 models: {a, b} + {c, d, e}", "keep single-task models (one per task)".
    """
    sizes = [len(group) for group in grouping]
    if n_tasks < 1 or sum(sizes) != n_tasks or 0 in sizes:
        raise ValueError(
            f"the grouping {list(map(list, grouping))} is no partition of {n_tasks} tasks"
        )
    if all(size == 1 for size in sizes):
        return "single_task", "keep single-task models (one per task)"
    if len(sizes) == 1:
        return "single_model", f"one model for all {n_tasks} tasks"
    return "grouped", f"{len(sizes)} models: " + " + ".join(_fmt_group(g) for g in grouping)
