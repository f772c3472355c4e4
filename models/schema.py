"""The recommendation: the JSON contract every client relies on (pydantic, no torch).

F1 scores, accuracies, deltas and tolerances are fractions in [0, 1] (0.01 is one F1 point);
layers are numbered 0 = embeddings, l = transformer layer l.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class STLMetrics(_Model):
    macro_f1: float = Field(description="Validation macro-F1 of the single-task model (0..1).")
    accuracy: float = Field(description="Validation accuracy of the single-task model (0..1).")
    steps: int = Field(description="Training steps of the fine-tune.")
    seconds: float = Field(description="Wall time of the fine-tune.")
    loss_curve: list[float] = Field(description="Mean training loss per window of 10 steps.")
    baseline_macro_f1: float | None = Field(
        default=None,
        description="The floor the model must clear to have learnt the task: the best "
        "validation macro-F1 of three predictors that ignore the text (always the most frequent "
        "training class; guessing with the training class shares; guessing uniformly). None: "
        "not recorded.",
    )
    baseline_class: str | None = Field(
        default=None,
        description="The training split's most frequent class (None: not recorded).",
    )
    learnt: bool | None = Field(
        default=None,
        description="Whether macro_f1 clears baseline_macro_f1 by at least LEARN_MARGIN (2 F1 "
        "points). False: the model learnt little of the task, and evidence involving it "
        "compares models that do not solve it (the verdict's notes say so). None: not recorded.",
    )


class SetAsideClass(_Model):
    label: str
    count: int


class TaskReport(_Model):
    name: str
    dataset: str
    column: str
    n_train: int
    n_val: int
    n_missing: int = Field(description="Rows with no label for this task (left out of it).")
    classes: list[str]
    set_aside: list[SetAsideClass] = Field(
        description="Classes rarer than min_class_count, left out of this task."
    )
    stl: STLMetrics
    cka_to_pretrained: list[float] = Field(
        description="Per layer, CKA of the fine-tuned model to the pretrained one.",
    )


class PairReport(_Model):
    tasks: tuple[str, str]
    rep_measure: Literal["cka", "partial_cka"] = Field(
        default="cka",
        description="The representation measure the pair's verdict reads (setting rep_measure): "
        "cka_min, or partial_cka_min.",
    )
    cka_per_layer: list[float]
    cka_min: float
    cka_min_layer: int
    cka_mean: float
    partial_cka_per_layer: list[float] | None = Field(
        default=None,
        description="Per layer, the partial CKA given the pretrained encoder: (C_ab - C_a C_b) / "
        "sqrt((1 - C_a^2)(1 - C_b^2)), C_a being task a's model's CKA to the pretrained one "
        "(cka_to_pretrained). How much of their drift from the shared start the two models "
        "share: near 1 where they moved together, near 0 or below where apart. Clipped to "
        "[-1, 1]. None: not recorded (older jobs).",
    )
    partial_cka_layers: list[int] | None = Field(
        default=None,
        description="The layers the partial CKA is read at: those where both models moved at "
        "least partial_cka_move from the pretrained encoder (1 - cka_to_pretrained).",
    )
    partial_cka_min: float | None = Field(
        default=None,
        description="The smallest partial CKA over partial_cka_layers; 1.0 when there is none "
        "(both models stayed near the shared encoder).",
    )
    partial_cka_min_layer: int | None = Field(
        default=None, description="Where partial_cka_min occurs (None: no layer counted)."
    )
    grad_cosine: float = Field(description="Mean whole-encoder gradient cosine.")
    grad_cosine_per_layer: list[float]
    conflict_rate: float = Field(description="Share of samples with whole-encoder cosine < 0.")
    cka_waived: bool = Field(
        default=False,
        description="True when the verdict does not read this pair's CKA: one of its tasks' "
        "single-task models learnt little (stl.learnt false) and the job waives such pairs "
        "(setting waive_unlearnt_cka). The pair is then judged on its gradients alone; affinity "
        "and p_match read its CKA as 1.0.",
    )
    tag_affinity: tuple[float, float] = Field(description="TAG lookahead affinity [a->b, b->a].")
    affinity: float = Field(
        description="0.5 * the measure's minimum (cka_min or partial_cka_min, as rep_measure "
        "says; 1.0 when cka_waived) + 0.5 * grad_cosine, used for tie-breaks."
    )
    passes: bool
    failures: list[str]


class GroupReport(_Model):
    tasks: list[str]
    origin: Literal["recommended", "all", "candidate"]
    origins: list[Literal["recommended", "all", "candidate"]]
    mtl_matches_stl: bool
    evidence: list[str]
    score: float | None = Field(
        description="Mean pair affinity within the group (None: singleton)."
    )
    margin: float | None = Field(description="Smallest pass margin over the group's pairs.")
    p_match: float | None = Field(
        default=None,
        description="Calibrated probability that one MTL model for the group matches its STL "
        "models: a logistic model over the group's evidence, fitted on verified groups "
        "(None: singleton, or no calibration in force).",
    )


class Verdict(_Model):
    kind: Literal["single_model", "grouped", "single_task"]
    summary: str
    n_models: int
    feasible: bool = Field(description="False when a max_groups budget forced failing groups.")
    method: Literal["exhaustive", "heuristic"]
    notes: list[str]
    best_candidate: int | None
    beats_candidates: bool | None = Field(
        description="Whether the recommended grouping is strictly better than the best candidate."
    )


class CandidateGroup(_Model):
    tasks: list[str]
    mtl_matches_stl: bool
    score: float | None


class CandidateReport(_Model):
    index: int
    groups: list[CandidateGroup]
    passes: bool
    n_models: int
    score: float | None = Field(description="Mean within-group pair affinity.")
    shortfall: float
    best: bool


class VerifiedTask(_Model):
    task: str
    stl_macro_f1: float
    mtl_macro_f1: float
    delta: float = Field(description="MTL minus STL macro-F1 (mean over seeds).")
    tolerance: float
    effect: Literal["helps", "neutral", "hurts"]
    stl_spread: float
    mtl_spread: float
    seed_deltas: list[float] | None = Field(
        default=None,
        description="MTL minus STL macro-F1 for each seed, in the order of `seeds` (None: not "
        "recorded).",
    )


class Verification(_Model):
    tasks: list[str]
    per_task: list[VerifiedTask]
    matches: bool
    predicted: bool
    outcome: Literal["confirmed", "refuted"]
    noise_method: Literal["bootstrap", "seeds"]
    margin_se: float | None = Field(
        default=None,
        description="How decisively the measurement came out: over the group's tasks, the "
        "smallest (delta + tolerance) / SE, SE being the standard error the noise estimate "
        "stands on (of the per-seed differences or of the held-out bootstrap, as in "
        "noise_method). Positive: the "
        "group matches; between -1 and 1 one standard error would turn the outcome over, so "
        "measure again with more seeds before acting on it. None: no spread to measure it by, "
        "or not recorded.",
    )
    seeds: list[int]
    steps: int
    seconds: float


class Recommendation(_Model):
    settings: dict[str, object]
    tasks: list[TaskReport]
    pairs: list[PairReport]
    grouping: list[list[str]]
    groups: list[GroupReport]
    verdict: Verdict
    candidates: list[CandidateReport]
    verification: list[Verification] | None
    timings: dict[str, float]
