"""Fitting the verdict to measurements: the thresholds and the calibrated probability ``p_match``.

The data are *verified groups*: for a group of tasks, the evidence stages 2-3 measured on its pairs
and whether the MTL model of the group, trained and compared with the STL models (stage 5),
matched them. The benchmark (``bench/bench_quality.py``) produces them by brute force; the service
collects them from every job run with verification on (``taskgrouper calibrate``).

A group's evidence is summarised by the features of :data:`FEATURES`, each taken over the group's
pairs the way the verdict reads them (the weakest pair decides): the smallest min-over-layers CKA,
the mean of the pairs' mean-over-layers CKA, the smallest whole-encoder gradient cosine, the largest
conflict rate, and the group size.

- :func:`fit_thresholds` chooses ``(tau_rep, tau_grad, rho)`` on a grid to maximise the balanced
  accuracy of the threshold verdict (ties: the middle of the tied region, so small shifts of the
  data move the choice least). ``rule="one_se"`` is the one-standard-error rule instead (Breiman
  et al.'s for CART): among the grid points within one standard error of the best balanced
  accuracy, the strictest ``tau_rep``. A benchmark alternative, not the default (see
  ``bench/RESULTS.md``).
- :func:`fit_calibration` fits ``p_match``, a logistic model over the standardised features with an
  L2 penalty (few observations, correlated features).
- :func:`leave_one_dataset_out` judges both on data they were not fitted on: each dataset's groups
  are predicted by thresholds and a model fitted on the other datasets; balanced accuracy and the
  Brier score are computed over the pooled held-out predictions (a single dataset often holds one
  class only, where balanced accuracy is undefined).

Light: numpy and scikit-learn, no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.grouping import Thresholds

FEATURES = ("cka_min", "cka_mean", "grad_cosine", "conflict_rate", "n_tasks")
DEFAULT_PATH = Path(__file__).with_name("calibration.json")

# The threshold grid (inclusive ends). CKA lies in [0, 1]; gradient cosines seen in practice in
# [-0.5, 0.5]; the conflict rate is a share.
TAU_REP_GRID = np.round(np.arange(0.0, 1.0001, 0.025), 3)
TAU_GRAD_GRID = np.round(np.arange(-0.5, 0.5001, 0.025), 3)
RHO_GRID = np.round(np.arange(0.0, 1.0001, 0.05), 3)


class CalibrationError(ValueError):
    """Too little or unusable data to fit; the message says what is missing."""


@dataclass(frozen=True)
class Observation:
    """One verified group: its evidence features and the measured outcome."""

    dataset: str  # the leave-one-dataset-out fold it belongs to
    tasks: tuple[str, ...]
    cka_min: float
    cka_mean: float
    grad_cosine: float
    conflict_rate: float
    matches: bool
    # Whether every task's single-task model learnt its task (``stl.learnt``; None: not known).
    # Not a feature: it marks the groups whose evidence compares models that solve their tasks.
    learnt: bool | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def features(self) -> list[float]:
        return [float(getattr(self, name)) for name in FEATURES]


def group_features(
    tasks: Sequence[str],
    pairs: Iterable[Mapping[str, Any]],
    *,
    waive: bool = False,
    measure: str = "cka",
) -> dict[str, float]:
    """The features of :data:`FEATURES` for ``tasks`` from pair reports (``tasks``, ``cka_min``,
    ``cka_mean`` or ``cka_per_layer``, ``grad_cosine``, ``conflict_rate``; ``cka_waived``;
    ``partial_cka_min``). The ``cka_min`` feature is the group's smallest min-over-layers CKA, or
    with ``measure="partial_cka"`` its smallest ``partial_cka_min`` (the measure a verdict with
    ``rep_measure`` "partial_cka" reads; CalibrationError where a pair did not record it). With
    ``waive``, it reads what a waiving verdict reads: 1.0 for a pair marked ``cka_waived`` (a
    task of it learnt little; ``grouping.PairEvidence.cka_waived``); without, the measured value
    of every pair. A calibration reads the view it was fitted on
    (``Calibration.waive_unlearnt_cka``, ``Calibration.rep_measure``)."""
    if measure not in ("cka", "partial_cka"):
        raise CalibrationError(f"measure must be 'cka' or 'partial_cka', got {measure!r}")
    key = "partial_cka_min" if measure == "partial_cka" else "cka_min"
    wanted = set(tasks)
    inside = [p for p in pairs if set(p["tasks"]) <= wanted]
    expected = len(wanted) * (len(wanted) - 1) // 2
    if len(wanted) < 2 or len(inside) != expected:
        raise CalibrationError(
            f"group {', '.join(tasks)}: needs evidence for all {expected} pairs, got {len(inside)}"
        )
    if any(p.get(key) is None for p in inside):
        raise CalibrationError(f"group {', '.join(tasks)}: a pair did not record {key}")

    def mean_cka(p: Mapping[str, Any]) -> float:
        if "cka_mean" in p:
            return float(p["cka_mean"])
        return float(np.mean(p["cka_per_layer"]))

    return {
        "cka_min": min(1.0 if waive and p.get("cka_waived") else float(p[key]) for p in inside),
        "cka_mean": float(np.mean([mean_cka(p) for p in inside])),
        "grad_cosine": min(float(p["grad_cosine"]) for p in inside),
        "conflict_rate": max(float(p["conflict_rate"]) for p in inside),
        "n_tasks": float(len(wanted)),
    }


def observation(
    dataset: str,
    tasks: Sequence[str],
    pairs: Iterable[Mapping[str, Any]],
    matches: bool,
    *,
    learnt: bool | None = None,
    waive: bool = False,
    measure: str = "cka",
) -> Observation:
    f = group_features(tasks, pairs, waive=waive, measure=measure)
    return Observation(
        dataset=dataset,
        tasks=tuple(tasks),
        cka_min=f["cka_min"],
        cka_mean=f["cka_mean"],
        grad_cosine=f["grad_cosine"],
        conflict_rate=f["conflict_rate"],
        matches=bool(matches),
        learnt=learnt,
    )


def observations_from_recommendation(
    rec: Mapping[str, Any], dataset: str, *, measure: str = "cka"
) -> list[Observation]:
    """The verified groups of a recommendation (``schema.Recommendation`` as JSON data), each
    marked ``learnt`` when every task's single-task model learnt (``stl.learnt``); ``measure``:
    the view of the representation evidence (:func:`group_features`)."""
    learnt = {t["name"]: (t.get("stl") or {}).get("learnt") for t in rec.get("tasks") or []}
    out = []
    for entry in rec.get("verification") or []:
        if len(entry["tasks"]) > 1:
            flags = [learnt.get(t) for t in entry["tasks"]]
            known = None if any(f is None for f in flags) else all(flags)
            out.append(
                observation(
                    dataset,
                    entry["tasks"],
                    rec["pairs"],
                    entry["matches"],
                    learnt=known,
                    measure=measure,
                )
            )
    return out


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def balanced_accuracy(y_true: Sequence[bool], y_pred: Sequence[bool]) -> float | None:
    """Mean of the recall on matching groups and the recall on losing groups; None when one of
    the two classes is absent (it is then undefined). A constant verdict scores 0.5."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    if t.all() or not t.any():
        return None
    return float(0.5 * (p[t].mean() + (~p[~t]).mean()))


def brier(y_true: Sequence[bool], prob: Sequence[float]) -> float:
    t = np.asarray(y_true, dtype=float)
    return float(np.mean((np.asarray(prob, dtype=float) - t) ** 2))


# --------------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdFit:
    thresholds: Thresholds
    balanced_accuracy: float
    n_tied: int  # grid points the choice was made among (tied at the best; "one_se": see there)


def _verdicts(x: np.ndarray, tau_rep: float, tau_grad: float, rho: float) -> np.ndarray:
    return (x[:, 0] >= tau_rep) & (x[:, 2] >= tau_grad) & (x[:, 3] <= rho)


THRESHOLD_RULES = ("best", "one_se")


def fit_thresholds(obs: Sequence[Observation], *, rule: str = "best") -> ThresholdFit:
    """Grid search for the thresholds with the best balanced accuracy on ``obs``.

    ``rule="best"`` (the default) takes the best grid points and, among ties, the one nearest
    their centre. ``rule="one_se"`` takes every grid point within one standard error of the best
    balanced accuracy (``0.5 * sqrt(b(1-b)/n_match + b(1-b)/n_lose)`` at the best ``b``), keeps
    those with the largest ``tau_rep`` (the strictest: a false "matches" costs accuracy, a false
    "loses" an extra model) and, among them, the one nearest their centre. Where the balanced
    accuracy is flat over a wide range of ``tau_rep``, "best" lands anywhere in it as the data
    shift; "one_se" lands at its strict end. ``ThresholdFit.balanced_accuracy`` is that of the
    point chosen.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    y = np.array([o.matches for o in obs], dtype=bool)
    if y.all() or not y.any():
        raise CalibrationError(
            f"fitting thresholds needs groups that matched and groups that lost; got {int(y.sum())}"
            f" matching of {len(y)}"
        )
    x = np.array([o.features() for o in obs])
    # Vectorised over the grid: (R, 1, 1, n) & (1, G, 1, n) & (1, 1, P, n).
    rep = x[None, :, 0] >= TAU_REP_GRID[:, None]
    grad = x[None, :, 2] >= TAU_GRAD_GRID[:, None]
    conf = x[None, :, 3] <= RHO_GRID[:, None]
    pred = rep[:, None, None, :] & grad[None, :, None, :] & conf[None, None, :, :]
    tpr = (pred & y).sum(-1) / y.sum()
    tnr = (~pred & ~y).sum(-1) / (~y).sum()
    score = 0.5 * (tpr + tnr)
    best = float(score.max())
    tied = np.argwhere(np.isclose(score, best, atol=1e-12))
    if rule == "one_se":
        var = best * (1.0 - best)
        se = 0.5 * math.sqrt(var / y.sum() + var / (~y).sum())
        near = np.argwhere(score >= best - se - 1e-12)
        tied = near[near[:, 0] == near[:, 0].max()]
    centre = tied.mean(axis=0)
    pick = tied[np.argmin(((tied - centre) ** 2).sum(axis=1))]
    th = Thresholds(
        tau_rep=float(TAU_REP_GRID[pick[0]]),
        tau_grad=float(TAU_GRAD_GRID[pick[1]]),
        rho=float(RHO_GRID[pick[2]]),
    )
    return ThresholdFit(th, float(score[tuple(pick)]), len(tied))


# --------------------------------------------------------------------------------------------------
# p_match
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """``p_match = 1 / (1 + exp(-(intercept + sum_k coef_k (x_k - mean_k) / scale_k)))``."""

    coef: tuple[float, ...]
    intercept: float
    means: tuple[float, ...]
    scales: tuple[float, ...]
    features: tuple[str, ...] = FEATURES
    n_groups: int = 0
    n_matching: int = 0
    datasets: tuple[str, ...] = ()
    source: str = ""  # what it was fitted on, in words
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out scores, when measured
    # The view of the evidence it was fitted on: True when its cka_min feature read waived pairs
    # (``group_features(waive=True)``) as 1.0. A job reads p_match's features in this view,
    # whatever its own waive_unlearnt_cka, so the model meets the features it was fitted on.
    waive_unlearnt_cka: bool = False
    # Its cka_min feature's measure (``group_features(measure=...)``): "cka", or "partial_cka".
    rep_measure: str = "cka"

    def logit(self, values: Mapping[str, float]) -> float:
        z = self.intercept
        for name, c, m, s in zip(self.features, self.coef, self.means, self.scales, strict=True):
            z += c * (float(values[name]) - m) / s
        return z

    def p_match(self, values: Mapping[str, float]) -> float:
        z = self.logit(values)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("coef", "means", "scales", "features", "datasets"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        features = tuple(data.get("features", FEATURES))
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            raise CalibrationError(f"calibration uses unknown feature(s): {', '.join(unknown)}")
        sizes = {len(data[k]) for k in ("coef", "means", "scales")} | {len(features)}
        if len(sizes) != 1:
            raise CalibrationError("calibration: coef, means, scales and features differ in length")
        if any(float(s) <= 0 for s in data["scales"]):
            raise CalibrationError("calibration: every scale must be positive")
        measure = str(data.get("rep_measure", "cka"))
        if measure not in ("cka", "partial_cka"):
            raise CalibrationError(f"calibration: unknown rep_measure {measure!r}")
        return cls(
            coef=tuple(float(c) for c in data["coef"]),
            intercept=float(data["intercept"]),
            means=tuple(float(m) for m in data["means"]),
            scales=tuple(float(s) for s in data["scales"]),
            features=features,
            n_groups=int(data.get("n_groups", 0)),
            n_matching=int(data.get("n_matching", 0)),
            datasets=tuple(data.get("datasets", ())),
            source=str(data.get("source", "")),
            metrics=dict(data.get("metrics", {})),
            waive_unlearnt_cka=bool(data.get("waive_unlearnt_cka", False)),
            rep_measure=measure,
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def fit_calibration(
    obs: Sequence[Observation], *, strength: float = 1.0, source: str = ""
) -> Calibration:
    """Logistic regression of ``matches`` on the standardised features (L2 penalty, C=strength).

    With one outcome only there is nothing to separate: the model is the (smoothed) base rate.
    """
    if not obs:
        raise CalibrationError("no verified groups to fit p_match on")
    x = np.array([o.features() for o in obs], dtype=float)
    y = np.array([o.matches for o in obs], dtype=bool)
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    scales[scales < 1e-9] = 1.0
    if y.all() or not y.any():
        rate = (y.sum() + 0.5) / (len(y) + 1.0)  # Jeffreys-smoothed share
        coef, intercept = (0.0,) * len(FEATURES), float(math.log(rate / (1 - rate)))
    else:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=strength, max_iter=1000)
        model.fit((x - means) / scales, y)
        coef, intercept = tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0])
    return Calibration(
        coef=coef,
        intercept=intercept,
        means=tuple(float(m) for m in means),
        scales=tuple(float(s) for s in scales),
        n_groups=len(obs),
        n_matching=int(y.sum()),
        datasets=tuple(sorted({o.dataset for o in obs})),
        source=source,
    )


# --------------------------------------------------------------------------------------------------
# Leave one dataset out
# --------------------------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """Pooled held-out predictions of a leave-one-dataset-out run, with per-fold details."""

    y: list[bool]
    threshold_verdicts: list[bool]
    p_match: list[float]
    base_rate: list[float]  # the training folds' share of matching groups: the no-skill forecast
    folds: list[dict[str, Any]]
    # For each prediction, the position of its observation in the sequence given to
    # :func:`leave_one_dataset_out` (the predictions come dataset by dataset).
    index: list[int] = field(default_factory=list)

    def scores(self) -> dict[str, Any]:
        y = self.y
        return {
            "n_groups": len(y),
            "n_matching": int(sum(y)),
            "balanced_accuracy_thresholds": balanced_accuracy(y, self.threshold_verdicts),
            "balanced_accuracy_p_match": balanced_accuracy(y, [p >= 0.5 for p in self.p_match]),
            "brier_p_match": brier(y, self.p_match) if y else None,
            "brier_base_rate": brier(y, self.base_rate) if y else None,
            "always_matches_balanced_accuracy": balanced_accuracy(y, [True] * len(y)),
        }

    def subset_scores(self, keep: Sequence[bool]) -> dict[str, Any]:
        """Held-out balanced accuracies on the groups ``keep`` marks; ``keep`` is in the order of
        the observations given to :func:`leave_one_dataset_out`, not of the predictions."""
        if len(keep) != len(self.index):
            raise ValueError(f"keep has {len(keep)} entries for {len(self.index)} observations")
        mine = [keep[i] for i in self.index]

        def kept(values: Sequence[Any]) -> list[Any]:
            return [v for v, k in zip(values, mine, strict=True) if k]

        y = kept(self.y)
        return {
            "n_groups": len(y),
            "n_matching": sum(y),
            "balanced_accuracy_thresholds": balanced_accuracy(y, kept(self.threshold_verdicts)),
            "balanced_accuracy_p_match": balanced_accuracy(
                y, [p >= 0.5 for p in kept(self.p_match)]
            ),
        }


def leave_one_dataset_out(
    obs: Sequence[Observation], *, strength: float = 1.0, rule: str = "best"
) -> HeldOut:
    """Fit on all datasets but one, predict the one left out; every dataset in turn. ``rule``:
    how the thresholds are fitted (:func:`fit_thresholds`).

    A fold whose training part holds one outcome only gets the thresholds that say "matches"
    for a matching-only history (the most permissive grid point) or "loses" otherwise.
    """
    datasets = sorted({o.dataset for o in obs})
    if len(datasets) < 2:
        raise CalibrationError("leave-one-dataset-out needs verified groups from 2+ datasets")
    out = HeldOut([], [], [], [], [])
    for held in datasets:
        train = [o for o in obs if o.dataset != held]
        test = [o for o in obs if o.dataset == held]
        out.index += [i for i, o in enumerate(obs) if o.dataset == held]
        try:
            fit = fit_thresholds(train, rule=rule)
            th = fit.thresholds
        except CalibrationError:
            everything = all(o.matches for o in train)
            th = Thresholds(
                tau_rep=0.0 if everything else 1.0,
                tau_grad=-1.0 if everything else 1.0,
                rho=1.0 if everything else 0.0,
            )
        cal = fit_calibration(train, strength=strength)
        x = np.array([o.features() for o in test])
        verdicts = _verdicts(x, th.tau_rep, th.tau_grad, th.rho).tolist()
        probs = [cal.p_match(dict(zip(FEATURES, o.features(), strict=True))) for o in test]
        out.y += [o.matches for o in test]
        out.threshold_verdicts += [bool(v) for v in verdicts]
        out.p_match += probs
        out.base_rate += [float(np.mean([o.matches for o in train]))] * len(test)
        out.folds.append(
            {
                "dataset": held,
                "n_groups": len(test),
                "n_matching": sum(o.matches for o in test),
                "thresholds": asdict(th),
                "train_match_rate": float(np.mean([o.matches for o in train])),
                "correct_thresholds": sum(
                    v == o.matches for v, o in zip(verdicts, test, strict=True)
                ),
                "brier": brier([o.matches for o in test], probs),
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# The shipped calibration
# --------------------------------------------------------------------------------------------------


def load_default() -> Calibration | None:
    """The calibration fitted on the benchmark and shipped with the package, if present."""
    return Calibration.load(DEFAULT_PATH) if DEFAULT_PATH.is_file() else None
