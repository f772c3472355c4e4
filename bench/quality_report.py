"""The report of ``bench_quality.py``: verdict accuracy, regret, planted recovery, cost.

Reads the case files the runs wrote, then

- fits the thresholds and ``p_match`` on all verified groups and judges both leave-one-dataset-out
  (``models.calibration``); the fit on all data is written to ``models/calibration.json`` with
  ``--ship`` (the package's default ``p_match`` model);
- per case, with the thresholds fitted *without* that case's dataset: the recommended grouping,
  its mean macro-F1 against the best partition's (regret, F1 points), planted grouping recovered;
- the cost of a recommendation against brute force, Standley's HOA and TAG, in training steps
  (one step = one batch forward and backward) and in measured seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

from models import grouping as grp
from models.calibration import (
    Calibration,
    CalibrationError,
    Observation,
    balanced_accuracy,
    fit_calibration,
    fit_thresholds,
    leave_one_dataset_out,
    observation,
)
from models.options import LEARN_MARGIN, AnalysisConfig
from models.similarity import partial_cka

SHIP = Path(__file__).resolve().parents[1] / "models" / "calibration.json"


def load_cases(folder: Path) -> list[dict[str, Any]]:
    """The measured cases in ``folder``. A case whose seed extension (``bench_quality.py
    extend``) was interrupted reads as it stood before that extension began (:func:`case_at` at
    its ``measured_seeds``), the part already extended being left for the extension to finish:
    the report never mixes groups compared over different seeds within a case."""
    cases = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("groups"):
            if data.get("extending"):
                seeds = list(data["measured_seeds"])
                at = case_at(data, len(seeds))
                if at is None:
                    raise ValueError(
                        f"{path.name}: a group was never compared over the {len(seeds)} seeds "
                        "its interrupted extension started from"
                    )
                target = data["extending"]
                extended = sum(len(g["seeds"]) >= target for g in data["groups"])
                # An extended group's training totals cover all its seeds: scaled back to the
                # seeds it is read on, as the cost table divides them by the case's seeds.
                at["groups"] = [
                    g
                    if len(raw["seeds"]) == len(seeds)
                    else {
                        **g,
                        "steps": round(raw["steps"] * len(seeds) / len(raw["seeds"])),
                        "seconds": raw["seconds"] * len(seeds) / len(raw["seeds"]),
                    }
                    for g, raw in zip(at["groups"], data["groups"], strict=True)
                ]
                data = {**at, "seeds": seeds, "extension_in_progress": (extended, target)}
                del data["extending"]
            data["complete"] = "seconds" in data
            cases.append(data)
    return cases


def case_observations(case: dict[str, Any], *, fast: bool = False) -> list[Observation]:
    """The measured groups with the full evidence, or with fast mode's (early-stopped) one. A
    pair marked ``cka_waived`` (only :func:`engine_view` marks them) reads as 1.0."""
    pairs = case["fast"]["pairs"] if fast else case["recommendation"]["pairs"]
    return [
        observation(case["dataset"], g["tasks"], pairs, g["matches"], waive=True)
        for g in case["groups"]
    ]


def seed_diffs(case: dict[str, Any], entry: dict[str, Any], task: str) -> np.ndarray:
    """A task's per-seed macro-F1 differences MTL - STL in one measured group."""
    mtl = np.asarray(entry["mtl"][task], dtype=float)
    return mtl - np.asarray(case["stl"][task][: len(mtl)], dtype=float)


def threshold_verdict(o: Observation, th: grp.Thresholds) -> bool:
    """The thresholds' verdict on an observed group, read as the verdict reads its weakest pair."""
    return o.cka_min >= th.tau_rep and o.grad_cosine >= th.tau_grad and o.conflict_rate <= th.rho


def outcome_margin(case: dict[str, Any], entry: dict[str, Any]) -> float:
    """How clearly a group's measured outcome was decided: over its tasks, the smallest
    ``(delta + tolerance) / SE``, SE being the standard error of the per-seed differences MTL - STL
    (positive: within the tolerance, the group matches; negative: below it, the group loses).
    Between -1 and 1, one seed-SE would move the measurement across the boundary: a coin toss
    that no evidence can be expected to predict."""
    worst = math.inf
    for p in entry["per_task"]:
        diffs = seed_diffs(case, entry, p["task"])
        se = float(diffs.std(ddof=1)) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
        edge = p["delta"] + p["tolerance"]
        worst = min(worst, edge / se if se > 0 else math.copysign(math.inf, edge))
    return worst


def retest_ceiling(
    cases: list[dict[str, Any]], *, replicates: int = 2000, seed: int = 0
) -> dict[str, Any] | None:
    """How well any evidence could agree with the measured outcomes: the seeds of every group
    are drawn again with replacement (one draw per seed, shared by the group's tasks, as they share
    the MTL model) and the group is decided again as ``models.verify.compare_group`` does:
    matches unless some task's mean difference is below ``-max(fixed, 2 SD / sqrt(n))``. The fixed
    part is the stored tolerance where the seed part did not set it, else the smallest tolerance
    (``AnalysisConfig.tolerance``). ``q`` is a group's share of re-measurements that match.

    ``ceiling``: the balanced accuracy, against the re-measurements, of a predictor that knows
    each ``q`` and says "matches" when it is 0.5 or more (mean and 5-95% over the replicates);
    ``agreement``: that of the measured outcomes themselves. An estimate from at most a handful of
    seeds: resampling them treats the observed spread as the true one (and a 5-seed bootstrap
    narrows it by sqrt(4/5)), and the bootstrap part of the tolerance is not stored. Groups whose
    stored outcome the recomputation does not reproduce are counted, not used."""
    floor = AnalysisConfig().tolerance
    rng = np.random.default_rng(seed)
    q, draws, measured, mismatched = [], [], [], 0
    for case in cases:
        for entry in case["groups"]:
            diffs = np.array([seed_diffs(case, entry, p["task"]) for p in entry["per_task"]])
            n = diffs.shape[1]
            if n < 2:
                continue
            seed_part = 2.0 * diffs.std(axis=1, ddof=1) / math.sqrt(n)
            stored = np.array([p["tolerance"] for p in entry["per_task"]])
            fixed = np.where(stored > seed_part + 1e-12, stored, floor)
            again = bool((diffs.mean(axis=1) >= -np.maximum(fixed, seed_part)).all())
            if again != bool(entry["matches"]):
                mismatched += 1
                continue
            redrawn = diffs[:, rng.integers(0, n, size=(replicates, n))]  # tasks x R x n
            tol = np.maximum(fixed[:, None], 2.0 * redrawn.std(axis=2, ddof=1) / math.sqrt(n))
            y = (redrawn.mean(axis=2) >= -tol).all(axis=0)
            q.append(float(y.mean()))
            draws.append(y)
            measured.append(bool(entry["matches"]))
    if not draws:
        return None
    y_all = np.array(draws)  # groups x R
    knows_q = np.array(q) >= 0.5
    as_measured = np.array(measured)

    def scores(pred: np.ndarray) -> list[float]:
        out = []
        for y in y_all.T:
            if y.all() or not y.any():
                continue
            out.append(0.5 * ((pred & y).sum() / y.sum() + (~pred & ~y).sum() / (~y).sum()))
        return out

    ceiling, agreement = scores(knows_q), scores(as_measured)
    qs = np.array(q)
    return {
        "groups": len(q),
        "not_reproduced": mismatched,
        "replicates": replicates,
        "ceiling": float(np.mean(ceiling)) if ceiling else None,
        "ceiling_5_95": [float(v) for v in np.percentile(ceiling, [5, 95])] if ceiling else None,
        "agreement": float(np.mean(agreement)) if agreement else None,
        "flip_rate": float(np.mean(np.where(as_measured, 1.0 - qs, qs))),
        "coin_tosses": int(((qs > 0.2) & (qs < 0.8)).sum()),
    }


def learnt_tasks(case: dict[str, Any]) -> set[str] | None:
    """The tasks whose single-task models learnt: mean macro-F1 over the seeds at least
    ``LEARN_MARGIN`` above the chance baseline (``bench_quality.py baselines``); None when
    the case has no baselines stored."""
    base = case.get("stl_baseline")
    if base is None:
        return None
    return {n for n, f1s in case["stl"].items() if np.mean(f1s) >= base[n] + LEARN_MARGIN}


ENGINE_WAIVES = AnalysisConfig.waive_unlearnt_cka
"""Whether the engine's default verdict waives the CKA of pairs with a task that learnt little
(``AnalysisConfig.waive_unlearnt_cka``); the report then judges its shipped fit the same way."""

ENGINE_MEASURE = AnalysisConfig.rep_measure
ENGINE_MOVE = AnalysisConfig.partial_cka_move
"""The representation measure the engine's default verdict reads (``AnalysisConfig.rep_measure``,
``partial_cka_move``); the report judges its shipped fit on the same view."""


def measure_view(
    case: dict[str, Any], measure: str | None = None, move: float | None = None
) -> dict[str, Any] | None:
    """``case`` with every pair's ``cka_min`` the measure ``measure`` reads: unchanged for "cka";
    for "partial_cka", the pair's partial CKA (``models.similarity.partial_cka`` at ``move``),
    in the full evidence and, where fast mode stored how far its models moved, in fast mode's
    (else fast mode's evidence is marked ``unjudged``). None when the case did not store how far
    its models moved (it cannot be read on that view). A copy; ``case`` unchanged. ``measure``
    and ``move`` default to the engine's (:data:`ENGINE_MEASURE`, :data:`ENGINE_MOVE`)."""
    measure = ENGINE_MEASURE if measure is None else measure
    move = ENGINE_MOVE if move is None else move
    if measure == "cka":
        return case
    stored = case["recommendation"].get("tasks") or []
    pre = {t["name"]: t["cka_to_pretrained"] for t in stored if t.get("cka_to_pretrained")}
    if not set(case["tasks"][:2]) <= set(pre):
        return None
    # Each pair's partial CKA, read once: the verdict's measure (cka_min), and what the engine's
    # affinity reads beside it (table_of): the plain min CKA, and whether any layer was read.

    def read(p: dict[str, Any]) -> dict[str, Any]:
        a, b = p["tasks"]
        if a not in pre or b not in pre:
            return {**p, "cka_min": None}
        r = partial_cka(p["cka_per_layer"], pre[a], pre[b], move=move)
        return {
            **p,
            "cka_min": r.min,
            "raw_cka_min": p["cka_min"],
            "partial_unread": r.min_layer is None,
        }

    rec = case["recommendation"]
    out = {**case, "recommendation": {**rec, "pairs": [read(p) for p in rec["pairs"]]}}
    fast = case.get("fast")
    if fast:
        if fast.get("tasks"):
            view = {"recommendation": {"tasks": fast["tasks"], "pairs": fast["pairs"]}}
            pairs = [
                {**p, "cka_min": partial_cka_min(view, list(p["tasks"]), move)}
                for p in fast["pairs"]
            ]
            out["fast"] = {**fast, "pairs": pairs}
        else:
            out["fast"] = {**fast, "unjudged": True}
    return out


def engine_view(case: dict[str, Any], waive: bool = ENGINE_WAIVES) -> dict[str, Any]:
    """``case`` as the engine's default verdict reads it: on its measure (:func:`measure_view`;
    the case unchanged where it cannot be read on it, where ``measure_view`` gives None) and, with
    ``waive``, every pair with a task whose seed-0 single-task model did not learn (macro-F1
    below its chance baseline + ``LEARN_MARGIN``, the service's ``stl.learnt``) marked
    ``cka_waived``, in the full evidence and in fast mode's (by fast mode's own models). A copy;
    ``case`` unchanged. Unchanged when the measure is CKA and ``waive`` is off or the case has
    no baselines."""
    case = measure_view(case) or case
    if not waive or case.get("stl_baseline") is None:
        return case

    def mark(pairs: list[dict[str, Any]], seed0: dict[str, float]) -> list[dict[str, Any]]:
        learnt = learnt_with(case, seed0)
        return [{**p, "cka_waived": not set(p["tasks"]) <= learnt} for p in pairs]

    rec = case["recommendation"]
    out = {
        **case,
        "recommendation": {
            **rec,
            "pairs": mark(rec["pairs"], {t: f1s[0] for t, f1s in case["stl"].items()}),
        },
    }
    if case.get("fast") and case["fast"].get("stl"):
        out["fast"] = {**case["fast"], "pairs": mark(case["fast"]["pairs"], case["fast"]["stl"])}
    return out


def table_of(case: dict[str, Any]) -> grp.PairTable:
    """The pair table the engine would read: on the partial-CKA view (:func:`measure_view`), a
    pair whose partial CKA read no layer is marked so, with its plain CKA beside it, as the
    service's own pair reports mark it (``grouping.PairEvidence.affinity`` reads them)."""
    evidence = []
    for p in case["recommendation"]["pairs"]:
        ev = grp.PairEvidence.from_report(p)
        if "partial_unread" in p:
            ev = dataclasses.replace(
                ev,
                measure="partial_cka",
                cka_min_layer=None if p["partial_unread"] else ev.cka_min_layer,
                raw_cka_min=p["raw_cka_min"],
            )
        evidence.append(ev)
    return grp.PairTable.from_pairs(case["tasks"], evidence)


def group_f1(case: dict[str, Any]) -> dict[frozenset[str], dict[str, float]]:
    """Seed-mean macro-F1 of each task under each measured model (singletons: STL)."""
    out = {frozenset([t]): {t: statistics.fmean(f1s)} for t, f1s in case["stl"].items()}
    for g in case["groups"]:
        out[frozenset(g["tasks"])] = {t: statistics.fmean(v) for t, v in g["mtl"].items()}
    return out


def partition_score(
    partition: list[list[str]], f1: dict[frozenset[str], dict[str, float]]
) -> float | None:
    """Mean task macro-F1 of a partition, or None if one of its groups was not measured."""
    values = []
    for group in partition:
        measured = f1.get(frozenset(group))
        if measured is None:
            return None
        values += [measured[t] for t in group]
    return statistics.fmean(values)


def best_partition(case: dict[str, Any]) -> tuple[list[list[str]], float]:
    f1 = group_f1(case)
    best: tuple[list[list[str]], float] | None = None
    for partition in grp.set_partitions(case["tasks"]):
        score = partition_score(partition, f1)
        if score is not None and (best is None or score > best[1] + 1e-12):
            best = (partition, score)
    assert best is not None  # the all-singletons partition is always measured
    return best


def regret_se(case: dict[str, Any], rec: list[list[str]], best: list[list[str]]) -> float | None:
    """The seed standard error of a regret, in F1 points: per seed k, the best partition's mean
    task macro-F1 minus the recommended one's (STL seed k for a singleton, MTL seed k for a group,
    paired by seed as the verification pairs them), over the seeds every model in both has. 0 when
    the two are the same partition; None when a group was not measured or fewer than 2 seeds.
    The regret itself is the difference of the seed means over all of each model's seeds: the
    same seeds, unless a case is part-way through an extension."""
    if same_partition(rec, best):
        return 0.0
    runs = seed_runs(case)

    def per_task(partition: list[list[str]]) -> list[list[float]] | None:
        out = []
        for group in partition:
            measured = runs.get(frozenset(group))
            if measured is None:
                return None
            out += [list(measured[t]) for t in group]
        return out

    a, b = per_task(best), per_task(rec)
    if a is None or b is None:
        return None
    n = min(len(v) for v in a + b)
    if n < 2:
        return None
    diff = np.mean([v[:n] for v in a], axis=0) - np.mean([v[:n] for v in b], axis=0)
    return 100.0 * float(np.std(diff, ddof=1)) / math.sqrt(n)


def seed_runs(case: dict[str, Any]) -> dict[frozenset[str], dict[str, list[float]]]:
    """Every measured model's per-seed macro-F1 by task: singletons are the STL models."""
    runs = {frozenset([t]): {t: list(f1s)} for t, f1s in case["stl"].items()}
    runs.update({frozenset(g["tasks"]): g["mtl"] for g in case["groups"]})
    return runs


def crossfit_regret(case: dict[str, Any], rec: list[list[str]]) -> float | None:
    """The regret with the winner's curse taken out, in F1 points: the best partition is chosen
    on one half of the seeds (even positions) and both it and the recommendation are scored on
    the other half, then the halves swap and the two regrets are averaged.

    The plain regret scores the best partition on the seeds that chose it, so noise alone makes it
    positive in expectation (the largest of several noisy means); this one scores a choice on
    seeds it did not see, so it is at most the true regret in expectation (a choice from half
    the seeds is at best the true best) and may be negative. The truth lies between the two.
    None when a group of the recommendation was not measured or the models share under 2 seeds.
    """
    runs = seed_runs(case)
    partitions = [
        p for p in grp.set_partitions(case["tasks"]) if all(frozenset(g) in runs for g in p)
    ]
    if not all(frozenset(g) in runs for g in rec):
        return None
    n = min(len(f1s) for model in runs.values() for f1s in model.values())
    if n < 2:
        return None

    def per_seed(partition: list[list[str]]) -> np.ndarray:
        rows = [runs[frozenset(g)][t][:n] for g in partition for t in g]
        return np.mean(np.asarray(rows, dtype=float), axis=0)

    scores = [per_seed(p) for p in partitions]
    rec_scores = per_seed(rec)
    halves = (np.arange(0, n, 2), np.arange(1, n, 2))
    regrets = []
    for choose, score in (halves, halves[::-1]):
        best = max(range(len(partitions)), key=lambda i: (scores[i][choose].mean(), -i))
        regrets.append(float(np.mean(scores[best][score] - rec_scores[score])))
    return 100.0 * statistics.fmean(regrets)


def same_partition(a: list[list[str]], b: list[list[str]]) -> bool:
    return {frozenset(g) for g in a} == {frozenset(g) for g in b}


def analysis_steps(alignment: dict[str, Any], t: int, batch_size: int) -> float:
    """Stage 3 in training steps: a joint warm-up step reads one (smaller) batch per task; a
    sample adds one backward per task and T x T lookahead forwards (a forward ~ 1/3 of a step)."""
    align_bs = min(batch_size, 16)
    return (alignment["steps"] * t + alignment["samples"] * t * (1 + t / 3)) * align_bs / batch_size


def cost(case: dict[str, Any]) -> dict[str, Any]:
    """Training steps (one batch forward + backward) and seconds, one seed each.

    An MTL model of a group trains each of its tasks for exactly its STL steps
    (``training.build_schedule``), so brute force over every group of 2+ tasks costs
    ``2^(T-1) x`` the STL steps (each task is in 2^(T-1) - 1 such groups, plus its STL model),
    Standley's HOA (T STL + T(T-1)/2 pairs) ``T x``, and TAG's one joint run of all tasks ``1 x``
    (its lookahead passes left out: a lower bound). Measured steps agree where brute force ran.
    """
    t = len(case["tasks"])
    stl = sum(case["stl_steps"].values())
    bs = case["training"]["batch_size"]
    recommendation = stl + analysis_steps(case["recommendation"]["alignment"], t, bs)
    brute, hoa, tag = 2 ** (t - 1) * stl, t * stl, stl
    measured = stl + sum(g["steps_per_seed"] for g in case["groups"])
    timings = case["recommendation"]["timings"]
    rec_s = sum(timings.get(k, 0.0) for k in ("finetune", "similarity", "alignment", "grouping"))
    n_seeds = len(case["seeds"])
    brute_s = None
    if case["group_mode"] == "all" and case["complete"]:
        brute_s = timings["finetune"] + sum(g["seconds"] / n_seeds for g in case["groups"])
    out = {
        "recommendation_steps": recommendation,
        "stl_share": stl / recommendation,
        "brute_force_steps": brute,
        "brute_force_steps_measured": measured if case["group_mode"] == "all" else None,
        "ratio_brute_force": recommendation / brute,
        "ratio_hoa": recommendation / hoa,
        "ratio_tag": recommendation / tag,
        "recommendation_s": rec_s,
        "brute_force_s": brute_s,
        "ratio_brute_force_s": rec_s / brute_s if brute_s else None,
    }
    fast = case.get("fast")
    if fast:
        fast_steps = sum(fast["stl_steps"].values()) + analysis_steps(fast["alignment"], t, bs)
        out["fast_steps"] = fast_steps
        out["fast_ratio_brute_force"] = fast_steps / brute
        out["fast_s"] = sum(
            fast["timings"].get(k, 0.0) for k in ("finetune", "similarity", "alignment")
        )
    return out


def judge_cases(
    cases: list[dict[str, Any]], fold_thresholds: dict[str, grp.Thresholds]
) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        th = fold_thresholds[case["dataset"]]
        table = table_of(case)
        learnt = learnt_tasks(case)
        rec = grp.recommend_grouping(case["tasks"], table, th).grouping
        f1 = group_f1(case)
        rec_score = partition_score(rec, f1)
        best, best_score = best_partition(case)
        verdicts = [grp.judge_group(g["tasks"], table, th).matches for g in case["groups"]]
        measured = [g["matches"] for g in case["groups"]]
        spreads = [
            max(p["stl_spread"], p["mtl_spread"]) for g in case["groups"] for p in g["per_task"]
        ]
        rows.append(
            {
                "case": case["case"],
                "complete": case["complete"],
                "groups": len(measured),
                "losing_groups": measured.count(False),
                "confirmed": sum(v == m for v, m in zip(verdicts, measured, strict=True)),
                "balanced_accuracy": balanced_accuracy(measured, verdicts),
                "thresholds": dataclasses.asdict(th),
                "recommended": rec,
                "recommended_f1": rec_score,
                "best": best,
                "best_f1": best_score,
                "regret_points": None if rec_score is None else 100 * (best_score - rec_score),
                "regret_se_points": regret_se(case, rec, best),
                "regret_crossfit_points": crossfit_regret(case, rec),
                "planted": case["planted"],
                "planted_recovered": None
                if case["planted"] is None
                else same_partition(rec, case["planted"]),
                "median_seed_spread_points": 100 * statistics.median(spreads),
                "unclear_groups": sum(abs(outcome_margin(case, g)) < 1.0 for g in case["groups"]),
                "learnt": None if learnt is None else sorted(learnt),
                "n_tasks": len(case["tasks"]),
                "seeds": min(len(g["seeds"]) for g in case["groups"]),
                # Groups whose measured outcome changed when more seeds were added (`extend`).
                "remeasured": sum("before" in g for g in case["groups"]),
                "now_lose": sum(
                    "before" in g and g["before"]["matches"] and not g["matches"]
                    for g in case["groups"]
                ),
                "now_match": sum(
                    "before" in g and not g["before"]["matches"] and g["matches"]
                    for g in case["groups"]
                ),
                "cost": cost(case),
            }
        )
    return rows


def fold_thresholds(obs: list[Observation]) -> dict[str, grp.Thresholds]:
    out = {}
    for held in sorted({o.dataset for o in obs}):
        out[held] = fit_thresholds([o for o in obs if o.dataset != held]).thresholds
    return out


def grouping_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Regret and planted recovery over :func:`judge_cases` rows: cases with regret <= 1.0 F1
    point, cases with a regret, the largest, the mean over cases (:func:`regret_mean`); the same
    counts, largest and mean of the cross-fitted regret (:func:`crossfit_regret`); planted
    groupings recovered, cases with one."""
    regrets = [r["regret_points"] for r in rows if r["regret_points"] is not None]
    crossfit = [
        r["regret_crossfit_points"] for r in rows if r["regret_crossfit_points"] is not None
    ]
    planted = [r["planted_recovered"] for r in rows if r["planted_recovered"] is not None]
    return {
        "regret_within_1": sum(r <= 1.0 for r in regrets),
        "regret_cases": len(regrets),
        "regret_max": max(regrets, default=None),
        **regret_mean(regrets),
        "regret_crossfit_within_1": sum(r <= 1.0 for r in crossfit),
        "regret_crossfit_cases": len(crossfit),
        "regret_crossfit_max": max(crossfit, default=None),
        "regret_crossfit_mean": statistics.fmean(crossfit) if crossfit else None,
        "planted_recovered": sum(planted),
        "planted_cases": len(planted),
    }


def regret_mean(regrets: list[float]) -> dict[str, float | None]:
    """The regret over cases, F1 points: its mean, the mean's standard error across cases (None
    under 2 cases) and the median; all None when no case has a regret."""
    if not regrets:
        return {"regret_mean": None, "regret_mean_se": None, "regret_median": None}
    se = statistics.stdev(regrets) / math.sqrt(len(regrets)) if len(regrets) > 1 else None
    return {
        "regret_mean": statistics.fmean(regrets),
        "regret_mean_se": se,
        "regret_median": statistics.median(regrets),
    }


def alternative_rule(
    cases: list[dict[str, Any]], obs: list[Observation], rule: str
) -> dict[str, Any]:
    """The held-out scores, regret and planted recovery under another threshold-fitting rule
    (``models.calibration.fit_thresholds``), beside the default rule's: ``one_se`` was chosen on
    the 14 cases of 2026-11-26 and is to be judged on cases added after it."""
    held = leave_one_dataset_out(obs, rule=rule)
    folds = {f["dataset"]: grp.Thresholds(**f["thresholds"]) for f in held.folds}
    rows = judge_cases(cases, folds)
    return {
        "rule": rule,
        "balanced_accuracy_thresholds": held.scores()["balanced_accuracy_thresholds"],
        "fold_tau_rep": sorted(th.tau_rep for th in folds.values()),
        "fitted_thresholds": dataclasses.asdict(fit_thresholds(obs, rule=rule).thresholds),
        **grouping_summary(rows),
        "rows": [
            {"case": r["case"], "regret_points": r["regret_points"], "confirmed": r["confirmed"]}
            for r in rows
        ],
    }


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


SHIPPED_FAMILY = "pretrained"
"""The family the shipped defaults are fitted on: the service's default model is MiniLM-L6."""


def family(case: dict[str, Any]) -> str:
    """Pretrained encoders (MiniLM) vs randomly initialised capacity-limited ones (tiny)."""
    return "random-init" if case["model"].startswith("tiny-") else "pretrained"


def evaluate(cases: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Held-out scores, thresholds fitted on all, per-case rows and fast mode, for ``cases``, read
    as the engine's default verdict reads them (:func:`engine_view`); the comparisons of other
    features (seed floor, partial CKA, learnt pairs) read the raw evidence. Cases that cannot be
    read on the engine's measure are left out (``not_on_engine_measure``)."""
    unread = [c["case"] for c in cases if measure_view(c) is None]
    cases = [c for c in cases if c["case"] not in unread]
    judged = [engine_view(c) for c in cases]
    obs = [o for case in judged for o in case_observations(case)]
    out: dict[str, Any] = {"label": label, "cases": [c["case"] for c in cases]}
    if unread:
        out["not_on_engine_measure"] = unread
    try:
        held = leave_one_dataset_out(obs)
        folds = fold_thresholds(obs)
        fit_all = fit_thresholds(obs)
    except CalibrationError as exc:
        out["error"] = str(exc)
        out["n_groups"] = len(obs)
        return out
    default = grp.Thresholds()
    x = np.array([o.features() for o in obs])
    y = [o.matches for o in obs]
    default_verdicts = (
        (x[:, 0] >= default.tau_rep) & (x[:, 2] >= default.tau_grad) & (x[:, 3] <= default.rho)
    )
    # The held-out predictions again, on the groups whose measured outcome is clear (a margin
    # of one seed-SE or more; ``outcome_margin``) and on those whose every single-task model
    # learnt; ``source`` pairs each observation with its case and group.
    source = [(c, g) for c in cases for g in c["groups"]]
    clear = [abs(outcome_margin(c, g)) >= 1.0 for c, g in source]
    informative = [
        (tasks := learnt_tasks(c)) is not None and set(o.tasks) <= tasks
        for (c, _), o in zip(source, obs, strict=True)
    ]
    out["learnt_groups"] = held.subset_scores(informative)
    out["clear_outcomes"] = held.subset_scores(clear)
    out["learnt_and_clear"] = held.subset_scores(
        [a and b for a, b in zip(informative, clear, strict=True)]
    )
    out.update(
        {
            "held_out": held.scores(),
            "folds": held.folds,
            "fitted_thresholds": dataclasses.asdict(fit_all.thresholds),
            "fitted_thresholds_balanced_accuracy_in_sample": fit_all.balanced_accuracy,
            "fitted_thresholds_ties": fit_all.n_tied,
            "current_default_balanced_accuracy": balanced_accuracy(y, default_verdicts.tolist()),
            "rows": (rows := judge_cases(judged, folds)),
            "grouping": grouping_summary(rows),
            "one_se_rule": alternative_rule(judged, obs, "one_se"),
            "seed_floor": seed_floor_comparison(cases),
            "fast_mode": evaluate_fast(judged),
            "retest": retest_ceiling(cases),
            "partial_cka": partial_cka_comparison(cases),
            "learnt_pairs": learnt_pairs_comparison(cases),
        }
    )
    cal = fit_calibration(
        obs, source=f"bench/bench_quality.py, {label}: {len(cases)} cases, {len(obs)} groups"
    )
    out["calibration"] = dataclasses.replace(
        cal,
        waive_unlearnt_cka=ENGINE_WAIVES,
        rep_measure=ENGINE_MEASURE,
        metrics={
            "held_out": out["held_out"],
            "fitted_thresholds": out["fitted_thresholds"],
            "fitted_thresholds_balanced_accuracy_in_sample": fit_all.balanced_accuracy,
        },
    ).to_dict()
    return out


def relative_cka_min(case: dict[str, Any], tasks: list[str], *, relative: bool) -> float:
    """The group's smallest per-layer pair CKA, from the models ``seedcka`` retrained
    (``pair_cka``), either as it is or divided by the two tasks' seed-to-seed CKA at that layer
    (``CKA_ij / sqrt(S_i S_j)``: how similar two tasks' models are, against how similar two seeds
    of one task's model are)."""
    floor = case["seed_cka"]
    pairs = {frozenset(k.split("+")): np.asarray(v) for k, v in case["pair_cka"].items()}
    out = math.inf
    for a, b in itertools.combinations(tasks, 2):
        curve = pairs[frozenset((a, b))]
        if relative:
            curve = curve / np.sqrt(
                np.clip(np.asarray(floor[a]) * np.asarray(floor[b]), 1e-6, None)
            )
        out = min(out, float(curve.min()))
    return out


def has_seed_floor(case: dict[str, Any]) -> bool:
    """Whether ``bench_quality.py seedcka`` has run on the case."""
    return "seed_cka" in case and "pair_cka" in case


def learnt_with(case: dict[str, Any], f1: dict[str, float]) -> set[str]:
    """The case's tasks whose models, of macro-F1 ``f1`` (one model per task), learnt: at least
    ``LEARN_MARGIN`` above the chance baseline, as the service's ``stl.learnt``."""
    base = case["stl_baseline"]
    return {t for t in case["tasks"] if f1[t] >= base[t] + LEARN_MARGIN}


def learnt_pairs_cka_min(case: dict[str, Any], tasks: list[str]) -> float | None:
    """The group's smallest min-over-layers CKA over its pairs whose two tasks' seed-0
    single-task models learnt (macro-F1 at least ``LEARN_MARGIN`` above the chance baseline: the
    service's ``stl.learnt``, which reads seed 0 too); 1.0 when no pair has two such tasks. A
    task whose model learnt nothing has no accuracy to lose, and its pairs' CKA compares a model
    that does not solve it. None when the case has no baselines stored."""
    if case.get("stl_baseline") is None:
        return None
    learnt = learnt_with(case, {t: f1s[0] for t, f1s in case["stl"].items()})
    pairs = {frozenset(p["tasks"]): p["cka_min"] for p in case["recommendation"]["pairs"]}
    values = [
        pairs[frozenset((a, b))]
        for a, b in itertools.combinations(tasks, 2)
        if a in learnt and b in learnt
    ]
    return min(values) if values else 1.0


def with_pair_cka(
    case: dict[str, Any], value: Callable[[dict[str, Any], list[str]], float | None]
) -> dict[str, Any]:
    """``case`` with every pair's ``cka_min`` replaced by ``value(case, pair's tasks)``, so that
    the grouping search and the verdicts run on that feature (a copy; ``case`` is unchanged)."""
    rec = dict(case["recommendation"])
    rec["pairs"] = [{**p, "cka_min": value(case, list(p["tasks"]))} for p in rec["pairs"]]
    return {**case, "recommendation": rec}


def with_learnt_pairs(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` with the ``cka_min`` of every pair that has a task whose seed-0 model did not
    learn set to 1.0, so that the grouping search and the verdicts read
    :func:`learnt_pairs_cka_min` (a group's min over its pairs is then exactly that)."""
    return with_pair_cka(case, learnt_pairs_cka_min)


def learnt_pairs_comparison(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Held-out scores with :func:`learnt_pairs_cka_min` in place of the min CKA, beside the
    plain min CKA on the same groups (the cases with baselines stored), and the regret and
    planted recovery of the groupings it gives with each fold's thresholds."""
    usable = [c for c in cases if c.get("stl_baseline") is not None]
    if len({c["dataset"] for c in usable}) < 2:
        return None
    plain = [o for c in usable for o in case_observations(c)]
    learnt = [
        dataclasses.replace(o, cka_min=learnt_pairs_cka_min(c, list(g["tasks"])))
        for c in usable
        for o, g in zip(case_observations(c), c["groups"], strict=True)
    ]
    held = leave_one_dataset_out(learnt)
    folds = {f["dataset"]: grp.Thresholds(**f["thresholds"]) for f in held.folds}
    rows = judge_cases([with_learnt_pairs(c) for c in usable], folds)
    return {
        "cases": len(usable),
        "groups": len(plain),
        "plain": leave_one_dataset_out(plain).scores(),
        "learnt_pairs": held.scores(),
        "fitted_thresholds": dataclasses.asdict(fit_thresholds(learnt).thresholds),
        **grouping_summary(rows),
    }


def seed_floor_comparison(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Held-out scores with the groups' min CKA as it is and relative to the seed-to-seed CKA
    (``relative_cka_min``), on the cases ``bench_quality.py seedcka`` has run on. A lead, not the
    shipped evidence: the relative form needs a second fine-tune of every task."""
    with_floor = [c for c in cases if has_seed_floor(c)]
    if len({c["dataset"] for c in with_floor}) < 2:
        return None
    out: dict[str, Any] = {"cases": len(with_floor)}
    for relative in (False, True):
        obs = [
            dataclasses.replace(o, cka_min=relative_cka_min(c, list(g["tasks"]), relative=relative))
            for c in with_floor
            for o, g in zip(case_observations(c), c["groups"], strict=True)
        ]
        out["relative" if relative else "raw"] = leave_one_dataset_out(obs).scores()
    return out


# How far (1 - CKA to the pretrained encoder) both tasks' models must have moved at a layer for
# that layer to count in the partial CKA; the comparison picks one per fold, in sample.
PARTIAL_MOVES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def partial_cka_min(case: dict[str, Any], tasks: list[str], move: float) -> float | None:
    """The group's smallest per-layer *partial* CKA, over its pairs and the layers where both
    tasks' models moved at least ``move`` from the pretrained encoder: the engine's own measure
    (``models.similarity.partial_cka``, read by a job with ``rep_measure`` "partial_cka"),
    recomputed from the stored CKAs. Reading CKA as a correlation, two models that each drifted
    from a shared start independently have ``C_ij ~ C_i C_j``; the partial form
    ``(C_ij - C_i C_j) / sqrt((1 - C_i^2)(1 - C_j^2))`` is how much of their drift they share. A
    group none of whose pairs has such a layer gets 1.0 (its models barely left the shared
    encoder). None when the case did not store the CKA to the pretrained encoder."""
    stored = case["recommendation"].get("tasks") or []
    pre = {t["name"]: t["cka_to_pretrained"] for t in stored if t.get("cka_to_pretrained")}
    if not set(tasks) <= set(pre):
        return None
    pairs = {frozenset(p["tasks"]): p["cka_per_layer"] for p in case["recommendation"]["pairs"]}
    return min(
        partial_cka(pairs[frozenset((a, b))], pre[a], pre[b], move=move).min
        for a, b in itertools.combinations(tasks, 2)
    )


def partial_observations(cases: list[dict[str, Any]], move: float) -> list[Observation] | None:
    """The cases' observations with ``cka_min`` replaced by :func:`partial_cka_min`; None when
    some case lacks the CKA to the pretrained encoder."""
    obs = []
    for c in cases:
        for o, g in zip(case_observations(c), c["groups"], strict=True):
            value = partial_cka_min(c, list(g["tasks"]), move)
            if value is None:
                return None
            obs.append(dataclasses.replace(o, cka_min=value))
    return obs


def partial_cka_comparison(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A lead, not the shipped evidence: the held-out balanced accuracy of the thresholds with the
    partial CKA (:func:`partial_cka_min`) in place of the raw one, on the cases that stored the CKA
    to the pretrained encoder. ``nested``: each fold picks ``move`` from :data:`PARTIAL_MOVES` by
    the in-sample balanced accuracy of its own fit, so the choice never sees the dataset it
    predicts; ``by_move``: every move's plain leave-one-dataset-out scores (the best of those is
    chosen with hindsight)."""
    usable = [c for c in cases if partial_observations([c], PARTIAL_MOVES[0]) is not None]
    if len({c["dataset"] for c in usable}) < 3:
        return None
    raw = [o for c in usable for o in case_observations(c)]
    by_move = {m: partial_observations(usable, m) or [] for m in PARTIAL_MOVES}
    y: list[bool] = []
    verdicts: list[bool] = []
    chosen: list[float] = []
    rows: list[dict[str, Any]] = []
    for d in sorted({o.dataset for o in raw}):
        try:
            fits = [
                (fit_thresholds([o for o in by_move[m] if o.dataset != d]), m)
                for m in PARTIAL_MOVES
            ]
        except CalibrationError as exc:  # the other datasets hold one outcome only
            return {"error": str(exc)}
        fit, move = max(fits, key=lambda f: f[0].balanced_accuracy)  # ties: the smallest move
        th = fit.thresholds
        chosen.append(move)
        # On the engine's partial-CKA view at this move: unread pairs marked, as table_of reads
        # them (usable cases all stored how far their models moved, so none is None).
        held = [
            view
            for c in usable
            if c["dataset"] == d and (view := measure_view(c, "partial_cka", move)) is not None
        ]
        rows += judge_cases(held, {d: th})
        for o in by_move[move]:
            if o.dataset == d:
                y.append(o.matches)
                verdicts.append(threshold_verdict(o, th))
    return {
        "cases": len(usable),
        "n_groups": len(raw),
        "raw": leave_one_dataset_out(raw).scores(),
        "nested_balanced_accuracy": balanced_accuracy(y, verdicts),
        "nested_moves": chosen,
        **grouping_summary(rows),
        "rows": [
            {
                "case": r["case"],
                "regret_points": r["regret_points"],
                "confirmed": r["confirmed"],
                "planted_recovered": r["planted_recovered"],
            }
            for r in rows
        ],
        "by_move": {str(m): leave_one_dataset_out(obs).scores() for m, obs in by_move.items()},
    }


def evaluate_fast(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Fast mode's held-out scores against the full evidence's, on the same cases."""
    fast_cases = [c for c in cases if c.get("fast") and not c["fast"].get("unjudged")]
    unjudged = sum(bool(c.get("fast") and c["fast"].get("unjudged")) for c in cases)
    if len({c["dataset"] for c in fast_cases}) < 2:
        return {"unjudged": unjudged} if unjudged else None
    fast_obs = [o for c in fast_cases for o in case_observations(c, fast=True)]
    same_obs = [o for c in fast_cases for o in case_observations(c)]
    try:
        return {
            "cases": len(fast_cases),
            "unjudged": unjudged,
            "fraction": fast_cases[0]["fast"]["fraction"],
            "fast": leave_one_dataset_out(fast_obs).scores(),
            "full_same_cases": leave_one_dataset_out(same_obs).scores(),
        }
    except CalibrationError as exc:
        return {"error": str(exc)}


def unread_pairs(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The measured pair groups whose partial CKA read no layer (neither model moved
    ``ENGINE_MOVE`` from the pretrained encoder anywhere both did): the verdict reads their
    representation as similar and rests on the gradients. How often such a pair matches, how
    often the shipped thresholds are right on them, and, in hindsight, the best a stricter rule
    could do there: the shipped verdict and ``raw_cka_min >= t`` for the ``t`` right on the most
    of them (ties to the lowest ``t``). An in-sample ceiling for such a rule, not evidence for
    it. None when no case can be read on the partial-CKA view."""
    th = grp.Thresholds()
    rows: list[tuple[float, bool, bool]] = []  # (raw CKA, shipped verdict, matches)
    read = 0
    for case in cases:
        view = measure_view(case, "partial_cka")
        if view is None:
            continue
        read += 1
        pairs = {frozenset(p["tasks"]): p for p in view["recommendation"]["pairs"]}
        for g in case["groups"]:
            p = pairs.get(frozenset(g["tasks"])) if len(g["tasks"]) == 2 else None
            if p is None or not p.get("partial_unread"):
                continue
            o = observation(case["dataset"], g["tasks"], view["recommendation"]["pairs"], True)
            rows.append((float(p["raw_cka_min"]), threshold_verdict(o, th), bool(g["matches"])))
    if not read:
        return None
    n, match = len(rows), sum(m for _, _, m in rows)
    right = sum(v == m for _, v, m in rows)
    best_t, best_right = 0.0, right
    for t in sorted({r for r, _, _ in rows}):
        got = sum((v and r >= t) == m for r, v, m in rows)
        if got > best_right:
            best_t, best_right = t, got
    return {
        "cases": read,
        "pairs": n,
        "match": match,
        "shipped_right": right,
        "best_raw_threshold": best_t,
        "best_right": best_right,
    }


def report(folder: Path, out: Path, *, ship: bool = False) -> int:
    cases = load_cases(folder)
    if not cases:
        print(f"no case results under {folder}: run `bench_quality.py run` first")
        return 1
    for c in cases:
        if "extension_in_progress" in c:
            done, target = c["extension_in_progress"]
            print(
                f"{c['case']}: extension to {target} seeds in progress ({done} of "
                f"{len(c['groups'])} groups), read on its {len(c['seeds'])} seeds until it finishes"
            )
    families = sorted({family(c) for c in cases})
    result = {
        "machine": f"{os.cpu_count()} cores, {cpu_model()}",
        "families": {f: evaluate([c for c in cases if family(c) == f], f) for f in families},
        "pooled": evaluate(cases, "pooled"),
        "unseen": shipped_on_unseen(cases),
        "partial_unseen": partial_rule_on_unseen(cases),
        "seed_floor_unseen": seed_floor_rules_on_unseen(cases),
        "learnt_pairs_unseen": learnt_pairs_rule_on_unseen(cases),
        "learnt_pairs_decision": learnt_pairs_decision(cases),
        "partial_cka_decision": partial_cka_decision(cases),
        "more_seeds": more_seeds_test(cases),
        "more_seeds_2": more_seeds_test(cases, MORE_SEEDS_2_PREREG),
        "more_seeds_3": more_seeds_test(cases, MORE_SEEDS_3_PREREG),
        "more_seeds_4": more_seeds_test(cases, MORE_SEEDS_4_PREREG),
        "unread_pairs": unread_pairs(cases),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    shipped = result["families"].get(SHIPPED_FAMILY, {})
    if ship:
        if "calibration" not in shipped:
            print(f"nothing shipped: no fit for the {SHIPPED_FAMILY} family")
            return 1
        Calibration.from_dict(shipped["calibration"]).save(SHIP)
    print(f"\nbench_quality report; machine: {result['machine']}")
    for name in [*families, "pooled"]:
        part = result["pooled"] if name == "pooled" else result["families"][name]
        print_tables(part)
    print_unseen(result["unseen"])
    partial = result["partial_unseen"]
    if partial:
        print_rule_on_unseen(
            "the partial-CKA rule written down before these cases ran",
            f"move {partial['move']:g}",
            "partial",
            partial,
        )
    for kind, rule in (result["seed_floor_unseen"] or {}).items():
        print_rule_on_unseen(
            "the seed-floor rule written down before seedcka ran on these cases",
            f"{kind} CKA",
            kind,
            rule,
        )
    print_rule_on_unseen(
        "the learnt-pairs rule written down before these cases ran",
        "min CKA over pairs of tasks that learnt",
        "learnt",
        result["learnt_pairs_unseen"],
    )
    print_decision(result["learnt_pairs_decision"], "learnt-pairs", "learnt_pairs_prereg.json")
    print_decision(result["partial_cka_decision"], "partial-CKA", "partial_cka_prereg.json")
    print_more_seeds(result["more_seeds"])
    print_more_seeds(result["more_seeds_2"])
    print_more_seeds(result["more_seeds_3"])
    print_more_seeds(result["more_seeds_4"])
    print_unread_pairs(result["unread_pairs"])
    return 0


def print_unread_pairs(part: dict[str, Any] | None) -> None:
    if not part:
        return
    if part["best_right"] > part["shipped_right"]:
        stricter = (
            f"in hindsight, also asking raw min CKA >= {part['best_raw_threshold']:.3f}: right on "
            f"{part['best_right']} (an in-sample ceiling for a stricter rule there)"
        )
    else:
        stricter = "no raw min-CKA threshold, chosen in hindsight on them, is right on more"
    print(
        f"\n== pairs whose partial CKA read no layer ({part['cases']} cases): "
        f"{part['pairs']} measured pair groups, {part['match']} match; shipped thresholds right "
        f"on {part['shipped_right']}; {stricter}"
    )


def shipped_on_unseen(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The shipped defaults (``grp.Thresholds()`` and ``models/calibration.json``) on the cases
    of the shipped family whose dataset the shipped fit did not see: a test on new data."""
    if not SHIP.is_file():
        return {"error": "no shipped calibration"}
    shipped = Calibration.load(SHIP)
    seen = set(shipped.datasets)
    t = grp.Thresholds()
    rows = []
    obs: list[Observation] = []
    for case in cases:
        if family(case) != SHIPPED_FAMILY or case["dataset"] in seen or not measure_view(case):
            continue
        for o in case_observations(engine_view(case)):
            values = {
                "cka_min": o.cka_min,
                "cka_mean": o.cka_mean,
                "grad_cosine": o.grad_cosine,
                "conflict_rate": o.conflict_rate,
                "n_tasks": float(o.n_tasks),
            }
            verdict = threshold_verdict(o, t)
            p = shipped.p_match(values)
            obs.append(o)
            rows.append(
                {
                    "dataset": o.dataset,
                    "tasks": list(o.tasks),
                    "matches": o.matches,
                    "verdict": verdict,
                    "p_match": p,
                }
            )
    if not rows:
        return {"datasets": [], "groups": 0, "fitted_on": sorted(seen)}
    y = [r["matches"] for r in rows]
    p = [r["p_match"] for r in rows]
    base = sum(y) / len(y)
    return {
        "fitted_on": sorted(seen),
        "datasets": sorted({r["dataset"] for r in rows}),
        "groups": len(rows),
        "lose": len(rows) - sum(y),
        "thresholds": dataclasses.asdict(t),
        "balanced_accuracy_thresholds": balanced_accuracy(y, [r["verdict"] for r in rows]),
        "balanced_accuracy_p_match": balanced_accuracy(y, [q >= 0.5 for q in p]),
        "brier_p_match": float(np.mean([(q - v) ** 2 for q, v in zip(p, y, strict=True)])),
        "brier_base_rate": float(np.mean([(base - v) ** 2 for v in y])),
        "rows": rows,
    }


def rule_on_unseen(
    cases: list[dict[str, Any]],
    fitted_on: list[str],
    feature: Callable[[dict[str, Any], list[str]], float | None],
    thresholds: dict[str, float],
) -> dict[str, Any]:
    """A rule written down before a test: ``thresholds`` read on ``feature`` (a group's value in
    place of its min CKA; None where a case cannot give it) on the shipped family's cases whose
    dataset is not that of a case in ``fitted_on``. Excluded by dataset, as the shipped fit's test
    does: a fitted case's data at another setting is not new data."""
    th = grp.Thresholds(**thresholds)
    seen = {c["dataset"] for c in cases if c["case"] in fitted_on}
    rows = []
    for case in cases:
        if family(case) != SHIPPED_FAMILY or case["dataset"] in seen:
            continue
        for o, g in zip(case_observations(case), case["groups"], strict=True):
            value = feature(case, list(g["tasks"]))
            if value is None:
                continue
            rows.append(
                {
                    "case": case["case"],
                    "tasks": list(o.tasks),
                    "matches": o.matches,
                    "value": value,
                    "verdict": threshold_verdict(dataclasses.replace(o, cka_min=value), th),
                }
            )
    y = [r["matches"] for r in rows]
    return {
        "thresholds": thresholds,
        "cases": sorted({r["case"] for r in rows}),
        "groups": len(rows),
        "lose": len(rows) - sum(y),
        "right": sum(r["matches"] == r["verdict"] for r in rows),
        "balanced_accuracy": balanced_accuracy(y, [r["verdict"] for r in rows]) if rows else None,
        "rows": rows,
    }


PARTIAL_PREREG = Path(__file__).resolve().parent / "results" / "partial_cka_prereg.json"
SEED_FLOOR_PREREG = Path(__file__).resolve().parent / "results" / "seed_floor_prereg.json"


def partial_rule_on_unseen(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The partial-CKA rule as written down in ``results/partial_cka_prereg.json`` (its ``move``
    and thresholds, fitted on the cases listed there) on the cases it was not fitted on."""
    if not PARTIAL_PREREG.is_file():
        return None
    rule = json.loads(PARTIAL_PREREG.read_text())
    move = rule["move"]
    out = rule_on_unseen(
        cases, rule["cases"], lambda c, t: partial_cka_min(c, t, move), rule["thresholds"]
    )
    return {"move": move, **out}


LEARNT_PAIRS_PREREG = Path(__file__).resolve().parent / "results" / "learnt_pairs_prereg.json"


def learnt_pairs_rule_on_unseen(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The learnt-pairs rule as written down in ``results/learnt_pairs_prereg.json`` on the
    cases it was not fitted on."""
    if not LEARNT_PAIRS_PREREG.is_file():
        return None
    rule = json.loads(LEARNT_PAIRS_PREREG.read_text())
    return rule_on_unseen(cases, rule["cases"], learnt_pairs_cka_min, rule["thresholds"])


def written_decision(
    cases: list[dict[str, Any]],
    prereg: Path,
    key: str,
    feature: Callable[[dict[str, Any], list[str], dict[str, Any]], float | None],
) -> dict[str, Any] | None:
    """A decision written down in ``prereg`` (its ``decision_cases``, ``decision_min_groups`` and
    the rule's ``thresholds``): on the groups of the named cases that are complete and give the
    rule's ``feature`` (``feature(case, tasks, rule)``, in place of the min CKA), pooled, the rule
    (under ``key``) against the shipped thresholds in force when each case ran (stored in its
    recommendation). ``adopt`` when the rule is right on at least as many groups and there are at
    least ``decision_min_groups`` groups. None when ``prereg`` names no decision cases."""
    if not prereg.is_file():
        return None
    rule = json.loads(prereg.read_text())
    named = rule.get("decision_cases")
    if not named:
        return None
    rule_th = grp.Thresholds(**rule["thresholds"])
    by_name = {c["case"]: c for c in cases}
    rows = []
    for name in named:
        case = by_name.get(name)
        if case is None or not case.get("complete"):
            continue
        values = [feature(case, list(g["tasks"]), rule) for g in case["groups"]]
        if any(v is None for v in values):
            continue
        shipped = grp.Thresholds(**case["recommendation"]["thresholds"])
        for o, value in zip(case_observations(case), values, strict=True):
            assert value is not None
            rows.append(
                {
                    "case": name,
                    "tasks": list(o.tasks),
                    "matches": o.matches,
                    "cka_min": o.cka_min,
                    "value": value,
                    "shipped": threshold_verdict(o, shipped),
                    key: threshold_verdict(dataclasses.replace(o, cka_min=value), rule_th),
                }
            )
    y = [r["matches"] for r in rows]
    right = {k: sum(r[k] == r["matches"] for r in rows) for k in ("shipped", key)}
    need = int(rule.get("decision_min_groups", 12))
    return {
        "rule": key,
        "cases": sorted({r["case"] for r in rows}),
        "missing": [n for n in named if n not in {r["case"] for r in rows}],
        "groups": len(rows),
        "lose": len(rows) - sum(y),
        "right": right,
        "balanced_accuracy": {
            k: balanced_accuracy(y, [r[k] for r in rows]) if rows else None for k in right
        },
        "min_groups": need,
        "adopt": len(rows) >= need and right[key] >= right["shipped"],
        "rows": rows,
    }


def learnt_pairs_decision(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The decision written down in ``results/learnt_pairs_prereg.json`` ("amended"): the
    learnt-pairs rule (:func:`learnt_pairs_cka_min`; cases with baselines stored)."""
    return written_decision(
        cases, LEARNT_PAIRS_PREREG, "learnt_pairs", lambda c, t, _r: learnt_pairs_cka_min(c, t)
    )


def partial_cka_decision(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The decision written down in ``results/partial_cka_prereg.json`` ("amended"): the
    partial-CKA rule (:func:`partial_cka_min` at the written ``move``; cases that store the CKA
    to the pretrained encoder)."""
    return written_decision(
        cases, PARTIAL_PREREG, "partial", lambda c, t, r: partial_cka_min(c, t, r["move"])
    )


def seed_floor_rules_on_unseen(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The two rules written down in ``results/seed_floor_prereg.json`` (min CKA relative to the
    seed-to-seed CKA, and the raw CKA of the same retrained models, each with thresholds fitted
    on the cases listed there) on the cases ``seedcka`` has run on since."""
    if not SEED_FLOOR_PREREG.is_file():
        return None
    rule = json.loads(SEED_FLOOR_PREREG.read_text())

    def feature(relative: bool) -> Callable[[dict[str, Any], list[str]], float | None]:
        def value(case: dict[str, Any], tasks: list[str]) -> float | None:
            if not has_seed_floor(case):
                return None
            return relative_cka_min(case, tasks, relative=relative)

        return value

    return {
        kind: rule_on_unseen(
            cases, rule["cases"], feature(kind == "relative"), rule[kind]["thresholds"]
        )
        for kind in ("relative", "raw")
    }


MORE_SEEDS_PREREG = Path(__file__).resolve().parent / "results" / "more_seeds_prereg.json"
MORE_SEEDS_2_PREREG = Path(__file__).resolve().parent / "results" / "more_seeds_2_prereg.json"
"""The second extension (twelfth session): the cases still on 5 seeds after the first, with
verdicts frozen on the partial-CKA default's view."""
MORE_SEEDS_3_PREREG = Path(__file__).resolve().parent / "results" / "more_seeds_3_prereg.json"
"""The third extension (fifteenth session): every case of at most 1,000 rows, 10 -> 20 seeds,
with the frozen recommendations beside the frozen verdicts."""
MORE_SEEDS_4_PREREG = Path(__file__).resolve().parent / "results" / "more_seeds_4_prereg.json"
"""The fourth extension (twenty-second session): the eleven 5,000-row birds cases first measured
on a GPU, 5 -> 10 seeds on a GPU, frozen as the third was."""


def as_first_measured(case: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """An extended group (``bench_quality.py extend``) as it was measured before the extension:
    its earlier outcome with the MTL macro-F1s of those seeds only (:func:`comparison_at`)."""
    first = comparison_at(entry, len(entry["before"]["seeds"]))
    assert first is not None  # the comparison under ``before`` was made over its own seeds
    return first


def comparison_at(entry: dict[str, Any], seeds: int) -> dict[str, Any] | None:
    """A measured group as it was compared over its first ``seeds`` seeds: ``entry`` itself or
    the comparison an extension kept under ``before`` (followed down the chain), with the MTL
    macro-F1s of those seeds only; None when no comparison was made over exactly that many. A
    ``before`` keeps only what the comparison decided: the rest (the tasks, the training steps)
    is the latest comparison's."""
    node: dict[str, Any] | None = entry
    while node is not None and len(node["seeds"]) > seeds:
        node = node.get("before")
    if node is None or len(node["seeds"]) != seeds:
        return None
    latest = {k: v for k, v in entry.items() if k != "before"}
    return {**latest, **node, "mtl": {n: v[:seeds] for n, v in entry["mtl"].items()}}


def case_at(case: dict[str, Any], seeds: int) -> dict[str, Any] | None:
    """``case`` as it stood when every group had been compared over ``seeds`` seeds (each group
    by :func:`comparison_at`, the STL macro-F1s cut to those seeds); None when a group never
    was. A copy; ``case`` unchanged."""
    groups = [comparison_at(g, seeds) for g in case["groups"]]
    if any(g is None for g in groups):
        return None
    stl = {t: list(f1s[:seeds]) for t, f1s in case["stl"].items()}
    return {**case, "groups": groups, "stl": stl}


def more_seeds_test(
    cases: list[dict[str, Any]], prereg: Path | None = None
) -> dict[str, Any] | None:
    """A seed extension written down in ``prereg`` (by default
    ``results/more_seeds_prereg.json``, :data:`MORE_SEEDS_PREREG`): on the
    groups already compared over the target number of seeds, each frozen verdict (the plan's
    ``rules`` and its ``p_match``, all written down on seed 0's evidence) against the outcome
    written down then and the outcome now; the groups whose outcome flipped each way; and
    the re-measurement ceiling (:func:`retest_ceiling`) of those groups then and now."""
    prereg = MORE_SEEDS_PREREG if prereg is None else prereg
    if not prereg.is_file():
        return None
    plan = json.loads(prereg.read_text())
    by_case = {c["case"]: c for c in cases}
    rows, then, now = [], [], []
    seeds_from: set[int] = set()
    for g in plan["groups"]:
        case = by_case.get(g["case"])
        if case is None:
            continue
        entry = next(
            (e for e in case["groups"] if frozenset(e["tasks"]) == frozenset(g["tasks"])), None
        )
        if entry is None:
            raise ValueError(
                f"{prereg.name}: {g['case']} has no measured group {'+'.join(g['tasks'])}"
            )
        # The comparison over the plan's seeds and the one it extended: a later extension
        # keeps both down its chain of ``before``s.
        at_target = comparison_at(entry, plan["seeds_target"])
        if at_target is None or "before" not in at_target:
            continue
        first = as_first_measured(case, at_target)
        # ``matches_5``: the name the first two plans (5 -> 10 seeds) gave the outcome before.
        before = g.get("matches_before", g.get("matches_5"))
        rows.append({**g, "matches_before": before, "matches_now": bool(at_target["matches"])})
        seeds_from.add(len(first["seeds"]))
        then.append({**case, "groups": [first]})
        now.append({**case, "groups": [at_target]})
    if not rows:
        return {"cases": [], "groups": 0, "prereg": prereg.name}
    y5 = [r["matches_before"] for r in rows]
    y10 = [r["matches_now"] for r in rows]
    out: dict[str, Any] = {
        "prereg": prereg.name,
        "seeds_from": sorted(seeds_from),
        "seeds_target": plan["seeds_target"],
        "planned": list(plan["cases"]),
        "cases": sorted({r["case"] for r in rows}),
        "groups": len(rows),
        "lose_then": len(rows) - sum(y5),
        "lose_now": len(rows) - sum(y10),
        "now_lose": sum(a and not b for a, b in zip(y5, y10, strict=True)),
        "now_match": sum(b and not a for a, b in zip(y5, y10, strict=True)),
        "rules": {},
        "ceiling_then": retest_ceiling(then),
        "ceiling_now": retest_ceiling(now),
        "rows": rows,
    }
    for name in plan["rules"]:
        verdicts = [r["verdict"][name] for r in rows]
        out["rules"][name] = {
            "thresholds": plan["rules"][name],
            "right_then": sum(v == y for v, y in zip(verdicts, y5, strict=True)),
            "right_now": sum(v == y for v, y in zip(verdicts, y10, strict=True)),
            "balanced_accuracy_then": balanced_accuracy(y5, verdicts),
            "balanced_accuracy_now": balanced_accuracy(y10, verdicts),
        }
    out["regret"] = frozen_regrets(cases, plan)
    p = [r["p_match"] for r in rows]
    out["rules"]["p_match"] = {
        "right_then": sum((q >= 0.5) == y for q, y in zip(p, y5, strict=True)),
        "right_now": sum((q >= 0.5) == y for q, y in zip(p, y10, strict=True)),
        "balanced_accuracy_then": balanced_accuracy(y5, [q >= 0.5 for q in p]),
        "balanced_accuracy_now": balanced_accuracy(y10, [q >= 0.5 for q in p]),
        "brier_then": float(np.mean([(q - y) ** 2 for q, y in zip(p, y5, strict=True)])),
        "brier_now": float(np.mean([(q - y) ** 2 for q, y in zip(p, y10, strict=True)])),
    }
    return out


def frozen_regrets(cases: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, Any] | None:
    """The regret of the recommendations a seed-extension plan froze (its ``recommendations``:
    per case, one grouping per rule) on each case whose every group reached the plan's seeds,
    before the extension and after: the plain regret (best partition's seed mean against the
    recommendation's, in F1 points; :func:`best_partition`) and the cross-fitted one
    (:func:`crossfit_regret`). None when the plan froze none."""
    recs = plan.get("recommendations")
    if not recs:
        return None
    target = plan["seeds_target"]
    rows = []
    for case in cases:
        if case["case"] not in recs:
            continue
        now = case_at(case, target)
        if now is None or "before" not in now["groups"][0]:
            continue
        then = case_at(case, len(now["groups"][0]["before"]["seeds"]))
        if then is None:
            continue
        row: dict[str, Any] = {"case": case["case"]}
        for rule in [r for r in recs[case["case"]] if r in plan["rules"]]:
            rec = recs[case["case"]][rule]
            for when, view in (("then", then), ("now", now)):
                _, best = best_partition(view)
                score = partition_score(rec, group_f1(view))
                row[f"{rule}_{when}"] = None if score is None else 100 * (best - score)
                row[f"{rule}_crossfit_{when}"] = crossfit_regret(view, rec)
        rows.append(row)
    summary: dict[str, Any] = {}
    for key in [k for k in rows[0] if k != "case"] if rows else []:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            summary[key] = {
                "mean": statistics.fmean(values),
                "at_most_1": sum(v <= 1.0 + 1e-9 for v in values),
                "max": max(values),
            }
    return {"cases": len(rows), "rows": rows, "summary": summary}


def print_more_seeds(part: dict[str, Any] | None) -> None:
    if not part or not part["groups"]:
        return
    start = "/".join(str(k) for k in part.get("seeds_from", [5]))
    target = part.get("seeds_target", 10)
    print(
        f"\n== the {start} -> {target} seed extension written down before it ran ({part['prereg']})"
    )
    left = [c for c in part.get("planned", []) if c not in part["cases"]]
    if left:
        print(f"not extended yet (not counted): {', '.join(left)}")
    print(
        f"cases: {', '.join(part['cases'])}; {part['groups']} groups; losing then "
        f"{part['lose_then']}, now {part['lose_now']} ({part['now_lose']} now lose, "
        f"{part['now_match']} now match)"
    )
    for name, r in part["rules"].items():
        brier = (
            f"; Brier {r['brier_then']:.3f} -> {r['brier_now']:.3f}" if "brier_then" in r else ""
        )
        print(
            f"  {name}: right {r['right_then']} -> {r['right_now']} of {part['groups']}, "
            f"balanced accuracy {fmt(r['balanced_accuracy_then'])} -> "
            f"{fmt(r['balanced_accuracy_now'])}{brier}"
        )
    for when in ("then", "now"):
        c = part[f"ceiling_{when}"]
        if c and c["ceiling"] is not None:
            print(
                f"  re-measurement ceiling {when}: {c['ceiling']:.2f} "
                f"({c['ceiling_5_95'][0]:.2f}-{c['ceiling_5_95'][1]:.2f}), outcomes flipping "
                f"{100 * c['flip_rate']:.0f}% on average, {c['coin_tosses']} coin tosses"
            )
    regret = part.get("regret")
    if regret and regret["cases"]:
        print(f"  the frozen recommendations' regret over {regret['cases']} extended case(s):")
        for key, v in regret["summary"].items():
            print(
                f"    {key:<24} mean {v['mean']:.2f}, at most 1.0 on {v['at_most_1']} of "
                f"{regret['cases']}, max {v['max']:.2f}"
            )
    names = [n for n in part["rules"] if n != "p_match"]
    print(
        f"{'case':<32} {'group':<44} {f'{start} seeds':>8} {f'{target} seeds':>9} "
        + " ".join(f"{n:>12}" for n in names)
        + f" {'p_match':>8}"
    )
    for r in part["rows"]:
        print(
            f"{r['case']:<32} {'+'.join(r['tasks']):<44} "
            f"{'matches' if r['matches_before'] else 'loses':>8} "
            f"{'matches' if r['matches_now'] else 'loses':>9} "
            + " ".join(f"{'match' if r['verdict'][n] else 'lose':>12}" for n in names)
            + f" {r['p_match']:>8.2f}"
        )


def print_rule_on_unseen(
    title: str, setting: str, column: str, part: dict[str, Any] | None
) -> None:
    if not part or not part["groups"]:
        return
    print(f"\n== {title} ({setting}, tau_rep {part['thresholds']['tau_rep']:g})")
    print(
        f"cases: {', '.join(part['cases'])}; {part['groups']} groups, {part['lose']} lose; "
        f"right {part['right']}, balanced accuracy {fmt(part['balanced_accuracy'])}"
    )
    print(f"{'case':<32} {'group':<44} {'measured':>9} {'verdict':>8} {column:>8}")
    for r in part["rows"]:
        print(
            f"{r['case']:<32} {'+'.join(r['tasks']):<44} "
            f"{'matches' if r['matches'] else 'loses':>9} "
            f"{'match' if r['verdict'] else 'lose':>8} {r['value']:>8.2f}"
        )


def print_decision(part: dict[str, Any] | None, title: str, prereg: str) -> None:
    if not part:
        return
    key = part["rule"]
    print(f"\n== the {title} decision (results/{prereg}, decision_cases)")
    if part["missing"]:
        print(f"not complete (not counted): {', '.join(part['missing'])}")
    r, ba = part["right"], part["balanced_accuracy"]
    verdict = "ADOPT" if part["adopt"] else "do not adopt"
    if part["groups"] < part["min_groups"]:
        verdict = "not decided yet"
    print(
        f"{part['groups']} groups ({part['lose']} lose) on {len(part['cases'])} cases: "
        f"{title} rule right on {r[key]} ({fmt(ba[key])}), shipped thresholds on "
        f"{r['shipped']} ({fmt(ba['shipped'])}); at least {part['min_groups']} groups needed: "
        f"{verdict}"
    )
    print(f"{'case':<28} {'group':<40} {'measured':>9} {'shipped':>8} {'rule':>6} {'value':>6}")
    for row in part["rows"]:
        print(
            f"{row['case']:<28} {'+'.join(row['tasks']):<40} "
            f"{'matches' if row['matches'] else 'loses':>9} "
            f"{'match' if row['shipped'] else 'lose':>8} "
            f"{'match' if row[key] else 'lose':>6} {row['value']:>6.2f}"
        )


def print_unseen(part: dict[str, Any]) -> None:
    print("\n== shipped defaults on datasets the shipped fit did not see")
    if "error" in part or not part.get("groups"):
        print(part.get("error", "none: every case's dataset was in the shipped fit"))
        return
    th = part["thresholds"]
    print(f"datasets: {', '.join(part['datasets'])}; {part['groups']} groups, {part['lose']} lose")
    print(
        f"balanced accuracy: thresholds (tau_rep {th['tau_rep']:g}, tau_grad {th['tau_grad']:g}, "
        f"rho {th['rho']:g}) {fmt(part['balanced_accuracy_thresholds'])}, "
        f"p_match >= 0.5 {fmt(part['balanced_accuracy_p_match'])}; Brier "
        f"{fmt(part['brier_p_match'], '.3f')} (base rate, in-sample: "
        f"{fmt(part['brier_base_rate'], '.3f')})"
    )
    print(f"{'group':<44} {'measured':>9} {'verdict':>8} {'p_match':>8}")
    for r in part["rows"]:
        name = "+".join(r["tasks"])
        print(
            f"{name:<44} {'matches' if r['matches'] else 'loses':>9} "
            f"{'match' if r['verdict'] else 'lose':>8} {r['p_match']:>8.2f}"
        )


def print_tables(part: dict[str, Any]) -> None:
    print(f"\n== {part['label']} ({len(part['cases'])} cases)")
    print(
        f"the engine's verdict: {ENGINE_MEASURE}"
        + (f" (partial_cka_move {ENGINE_MOVE:g})" if ENGINE_MEASURE == "partial_cka" else "")
    )
    if part.get("not_on_engine_measure"):
        print(
            "left out, no record of how far their models moved: "
            + ", ".join(part["not_on_engine_measure"])
        )
    if "error" in part:
        print(f"  not fitted: {part['error']}")
        return
    s = part["held_out"]
    print(
        f"verified groups: {s['n_groups']} ({s['n_groups'] - s['n_matching']} lose, "
        f"{100 * (1 - s['n_matching'] / s['n_groups']):.0f}%)"
    )
    print("Held out (leave one dataset out, pooled over folds):")
    print(f"  balanced accuracy, fitted thresholds: {fmt(s['balanced_accuracy_thresholds'])}")
    print(f"  balanced accuracy, p_match >= 0.5:    {fmt(s['balanced_accuracy_p_match'])}")
    print(
        f"  Brier, p_match: {fmt(s['brier_p_match'], '.3f')}  (base rate: "
        f"{fmt(s['brier_base_rate'], '.3f')})"
    )
    print(f"  always 'matches': {fmt(s['always_matches_balanced_accuracy'])}")
    subsets = (
        ("learnt_groups", "whose every single-task model learnt (chance baseline + 2 points)"),
        ("clear_outcomes", "whose outcome is clear (worst task 1 seed-SE or more from tolerance)"),
        ("learnt_and_clear", "of both kinds"),
    )
    for key, what in subsets:
        c = part[key]
        print(
            f"  on the {c['n_groups']} groups {what}, {c['n_groups'] - c['n_matching']} losing: "
            f"thresholds {fmt(c['balanced_accuracy_thresholds'])}, "
            f"p_match {fmt(c['balanced_accuracy_p_match'])}"
        )
    print(
        f"  thresholds in force when run, in sample: "
        f"{fmt(part['current_default_balanced_accuracy'])}"
    )
    th = part["fitted_thresholds"]
    print(
        f"thresholds fitted on all: tau_rep {th['tau_rep']}, tau_grad {th['tau_grad']}, "
        f"rho {th['rho']} (in-sample balanced accuracy "
        f"{part['fitted_thresholds_balanced_accuracy_in_sample']:.2f}, "
        f"{part['fitted_thresholds_ties']} tied grid points)"
    )
    alt = part.get("one_se_rule")
    if alt:
        rows = part["rows"]
        regrets = [r["regret_points"] for r in rows if r["regret_points"] is not None]
        planted = [r["planted_recovered"] for r in rows if r["planted_recovered"] is not None]
        th = alt["fitted_thresholds"]
        print(
            f"alternative rule {alt['rule']} (strictest tau_rep within one SE of the best): "
            f"held-out balanced accuracy {fmt(alt['balanced_accuracy_thresholds'])} (default rule "
            f"{fmt(part['held_out']['balanced_accuracy_thresholds'])}); regret <= 1.0 on "
            f"{alt['regret_within_1']}/{alt['regret_cases']} cases, max "
            f"{fmt(alt['regret_max'], '.1f')} (default {sum(r <= 1.0 for r in regrets)}/"
            f"{len(regrets)}, max {fmt(max(regrets) if regrets else None, '.1f')}); planted "
            f"{alt['planted_recovered']}/{alt['planted_cases']} (default {sum(planted)}/"
            f"{len(planted)}); fitted on all: tau_rep {th['tau_rep']}, tau_grad "
            f"{th['tau_grad']}, rho {th['rho']}; fold tau_rep {alt['fold_tau_rep']}"
        )
    floor = part.get("seed_floor")
    if floor:
        r, q = floor["raw"], floor["relative"]
        print(
            f"min CKA relative to the seed-to-seed CKA ({floor['cases']} cases, models retrained "
            f"on the CPU): held-out balanced accuracy, thresholds "
            f"{fmt(q['balanced_accuracy_thresholds'])} (as it is: "
            f"{fmt(r['balanced_accuracy_thresholds'])}), p_match "
            f"{fmt(q['balanced_accuracy_p_match'])} ({fmt(r['balanced_accuracy_p_match'])}), "
            f"Brier {fmt(q['brier_p_match'], '.3f')} ({fmt(r['brier_p_match'], '.3f')})"
        )
    fast = part.get("fast_mode")
    if fast and "fast" in fast:
        f, g = fast["fast"], fast["full_same_cases"]
        print(
            f"fast mode (fine-tunes at {fast['fraction']:.0%} of their steps, {fast['cases']} "
            f"cases): held-out balanced accuracy {fmt(f['balanced_accuracy_thresholds'])} "
            f"(full: {fmt(g['balanced_accuracy_thresholds'])}), p_match "
            f"{fmt(f['balanced_accuracy_p_match'])} (full: {fmt(g['balanced_accuracy_p_match'])})"
            f", Brier {fmt(f['brier_p_match'], '.3f')} (full: {fmt(g['brier_p_match'], '.3f')})"
            + (
                f"; {fast['unjudged']} cases' fast runs not judged (no record of how far their "
                "models moved)"
                if fast.get("unjudged")
                else ""
            )
        )
    elif fast and fast.get("unjudged"):
        print(
            f"fast mode: not judged on the engine's measure ({fast['unjudged']} cases' fast runs "
            f"did not record how far their models moved; `bench_quality.py fast --again` does)"
        )
    partial = part.get("partial_cka")
    if partial and "error" not in partial:
        best = max(partial["by_move"].items(), key=lambda kv: kv[1]["balanced_accuracy_thresholds"])
        moves = sorted(set(partial["nested_moves"]))
        print(
            f"partial CKA (the share of two models' drift from the pretrained encoder they share; "
            f"{partial['cases']} cases, {partial['n_groups']} groups): held-out balanced accuracy, "
            f"thresholds, move chosen inside each fold {fmt(partial['nested_balanced_accuracy'])} "
            f"(moves {', '.join(f'{m:g}' for m in moves)}; raw CKA on the same groups "
            f"{fmt(partial['raw']['balanced_accuracy_thresholds'])}); regret <= 1.0 on "
            f"{partial['regret_within_1']}/{partial['regret_cases']} cases, max "
            f"{fmt(partial['regret_max'], '.1f')}; planted {partial['planted_recovered']}/"
            f"{partial['planted_cases']}; best move in hindsight "
            f"{best[0]}: thresholds {fmt(best[1]['balanced_accuracy_thresholds'])}, p_match "
            f"{fmt(best[1]['balanced_accuracy_p_match'])}, Brier "
            f"{fmt(best[1]['brier_p_match'], '.3f')}"
            f" (raw: {fmt(partial['raw']['balanced_accuracy_p_match'])}, "
            f"{fmt(partial['raw']['brier_p_match'], '.3f')})"
        )
    learnt = part.get("learnt_pairs")
    if learnt:
        lp, pl = learnt["learnt_pairs"], learnt["plain"]
        print(
            f"min CKA over pairs of tasks that learnt (seed 0; {learnt['cases']} cases, "
            f"{learnt['groups']} groups): held-out balanced accuracy, thresholds "
            f"{fmt(lp['balanced_accuracy_thresholds'])} (plain min CKA: "
            f"{fmt(pl['balanced_accuracy_thresholds'])}), p_match "
            f"{fmt(lp['balanced_accuracy_p_match'])} ({fmt(pl['balanced_accuracy_p_match'])}), "
            f"Brier {fmt(lp['brier_p_match'], '.3f')} ({fmt(pl['brier_p_match'], '.3f')}); "
            f"fitted on all: tau_rep {learnt['fitted_thresholds']['tau_rep']:g}; regret <= 1.0 "
            f"on {learnt['regret_within_1']}/{learnt['regret_cases']} cases, max "
            f"{fmt(learnt['regret_max'], '.1f')}; planted {learnt['planted_recovered']}/"
            f"{learnt['planted_cases']}"
        )
    retest = part.get("retest")
    if retest and retest["ceiling"] is not None:
        lo, hi = retest["ceiling_5_95"]
        print(
            f"re-measuring ({retest['groups']} groups, their seeds drawn again "
            f"{retest['replicates']} times): balanced accuracy of a predictor that knows each "
            f"group's chance to match {retest['ceiling']:.2f} (5-95% {lo:.2f}-{hi:.2f}), of the "
            f"measured outcomes {retest['agreement']:.2f}; {retest['flip_rate']:.0%} of outcomes "
            f"flip on average, {retest['coin_tosses']} groups match in 20-80% of re-measurements"
            + (f"; {retest['not_reproduced']} not reproduced" if retest["not_reproduced"] else "")
        )
    rows = part["rows"]
    again = sum(r["remeasured"] for r in rows)
    if again:
        print(
            f"re-measured with more seeds: {again} groups; the measured outcome changed for "
            f"{sum(r['now_lose'] + r['now_match'] for r in rows)} "
            f"({sum(r['now_lose'] for r in rows)} now lose, "
            f"{sum(r['now_match'] for r in rows)} now match)"
        )
    judged = [r for r in rows if r["regret_points"] is not None]
    if judged:
        within = [
            r for r in judged if r["regret_points"] - 2 * (r["regret_se_points"] or 0.0) <= 1.0
        ]
        print(
            f"regret (held-out thresholds): <= 1.0 F1 point on "
            f"{sum(r['regret_points'] <= 1.0 for r in judged)}/{len(judged)} cases; within two "
            f"seed-SEs of 1.0 (no surer than the seeds allow) on {len(within)}/{len(judged)}"
        )
        m = regret_mean([r["regret_points"] for r in judged])
        print(
            f"regret over cases: mean {fmt(m['regret_mean'], '.2f')} F1 points (SE "
            f"{fmt(m['regret_mean_se'], '.2f')}), median {fmt(m['regret_median'], '.2f')}, "
            f"max {max(r['regret_points'] for r in judged):.1f}"
        )
        xfit = part["grouping"]
        if xfit["regret_crossfit_cases"]:
            print(
                f"regret with the best partition chosen on half the seeds and scored on the other "
                f"(cross-fitted; the plain regret is biased up, this one down): <= 1.0 F1 point "
                f"on {xfit['regret_crossfit_within_1']}/{xfit['regret_crossfit_cases']} cases, "
                f"mean {fmt(xfit['regret_crossfit_mean'], '.2f')}, max "
                f"{fmt(xfit['regret_crossfit_max'], '.1f')}"
            )
    print(
        "\n| case | seeds | tasks learnt | groups (lose, unclear) | confirmed | bal. acc. | "
        "regret F1 pts (SE) | cross-fitted | "
        "planted | seed spread pts | steps vs brute / HOA / TAG | fast vs brute |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in part["rows"]:
        c = r["cost"]
        planted = {None: "–", True: "yes", False: "no"}[r["planted_recovered"]]
        print(
            f"| {r['case']}{'' if r['complete'] else ' (partial)'} | {r['seeds']} | "
            f"{'–' if r['learnt'] is None else len(r['learnt'])}/{r['n_tasks']} | {r['groups']} "
            f"({r['losing_groups']}, {r['unclear_groups']}) | {r['confirmed']}/{r['groups']} | "
            f"{fmt(r['balanced_accuracy'])} | {fmt(r['regret_points'], '.1f')} "
            f"({fmt(r['regret_se_points'], '.1f')}) | {fmt(r['regret_crossfit_points'], '.1f')} | "
            f"{planted} | "
            f"{r['median_seed_spread_points']:.1f} | {fmt(c['ratio_brute_force'], '.3f')} / "
            f"{fmt(c['ratio_hoa'], '.3f')} / {fmt(c['ratio_tag'], '.2f')} | "
            f"{fmt(c.get('fast_ratio_brute_force'), '.3f')} |"
        )
