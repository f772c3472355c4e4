"""What a job asks for: datasets, tasks, training settings and analysis settings.

Plain dataclasses without torch, so the API process and the CLI can build and validate a job
before anything heavy is imported. Defaults and bounds are the documented ones (README, METHOD).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from models.calibration import Calibration, load_default
from models.grouping import Thresholds


@dataclass(frozen=True)
class TrainingConfig:
    """Fine-tuning settings shared by every model of a job (STL, warm-up and MTL alike)."""

    epochs: int = 3
    max_steps: int | None = None  # caps each single-task fine-tune (and each MTL task's share)
    # Fast mode (Standley et al.'s early-stopping approximation): every model trains for this share
    # of its steps, schedule included; the MTL models of verification too, so they compare alike.
    step_fraction: float = 1.0
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 128
    probe_size: int = 1024
    seed: int = 0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    # How each task's cross-entropy weighs its classes: "none" (every example alike, METHOD.md's
    # plain cross-entropy) or "balanced" (class k weighs n / (K n_k) on the task's training split,
    # scikit-learn's "balanced"), so that a model on an imbalanced task is not rewarded for
    # predicting its majority class. Applies to every loss of the job: fine-tunes, the stage-3
    # warm-up and gradients, and verification's MTL models.
    class_weights: Literal["none", "balanced"] = "none"

    def __post_init__(self) -> None:
        checks = {
            "epochs": 1 <= self.epochs <= 100,
            "max_steps": self.max_steps is None or 1 <= self.max_steps <= 1_000_000,
            "step_fraction": 0.0 < self.step_fraction <= 1.0,
            "lr": 0.0 < self.lr <= 1.0,
            "batch_size": 1 <= self.batch_size <= 1024,
            "max_length": 8 <= self.max_length <= 4096,
            "probe_size": 4 <= self.probe_size <= 65_536,
            "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0,
            "weight_decay": 0.0 <= self.weight_decay < 1.0,
            "class_weights": self.class_weights in ("none", "balanced"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"training setting {bad[0]}={getattr(self, bad[0])!r} is out of range")


LEARN_MARGIN = 0.02
"""A single-task model has learnt its task when its validation macro-F1 beats its chance baseline
(``training.chance_baseline``: the best predictor that ignores the text) by at least this much
(2 F1 points: twice verification's smallest tolerance)."""

TRAINING_KEYS = (
    "epochs",
    "max_steps",
    "step_fraction",
    "lr",
    "batch_size",
    "max_length",
    "probe_size",
    "seed",
    "class_weights",
)
"""The training settings a client sets (API, CLI) and a recommendation reports."""


@dataclass(frozen=True)
class AnalysisConfig:
    """How the evidence is gathered and judged (METHOD.md stages 2-5)."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    # The logistic model behind each group's p_match; by default the one fitted on the benchmark
    # and shipped as models/calibration.json (None: no p_match).
    calibration: Calibration | None = field(default_factory=load_default)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Stage 4: a pair with a task whose single-task model learnt little (stl.learnt false) is
    # judged without its CKA (PairEvidence.cka_waived; README "How good is the verdict?").
    waive_unlearnt_cka: bool = False
    # Stage 4: the representation measure a pair's verdict reads (grouping.REP_MEASURES):
    # "partial_cka" (the default since the pre-registered decision in
    # bench/results/partial_cka_prereg.json), min-over-layers partial CKA given the pretrained
    # encoder over the layers where both tasks' models moved at least partial_cka_move
    # (models.similarity.partial_cka; README "How good is the verdict?"), or "cka", min-over-layers
    # CKA as METHOD.md has it. Every pair report carries both; the thresholds must be the
    # measure's (grouping.default_thresholds).
    rep_measure: Literal["cka", "partial_cka"] = "partial_cka"
    partial_cka_move: float = 0.3
    min_class_count: int = 5
    val_fraction: float = 0.2
    max_groups: int | None = None
    exhaustive_limit: int = 10
    # Stage 3: joint warm-up of S steps from the pretrained encoder, sampled every m steps.
    align_steps: int | None = None  # None: a tenth of an epoch of the largest task, 12..48 steps
    align_every: int = 2
    align_batch_size: int | None = None  # None: min(batch_size, 16)
    head_fit_examples: int = 512
    # Stage 2: minibatch CKA (Nguyen et al.) when set; None computes it on the whole probe set.
    cka_batch_size: int | None = None
    # Stage 5.
    verify_seeds: int = 1
    tolerance: float = 0.01  # one F1 point, as a fraction; the noise may widen it

    def __post_init__(self) -> None:
        if self.rep_measure not in ("cka", "partial_cka"):
            raise ValueError(
                f"rep_measure must be 'cka' or 'partial_cka', got {self.rep_measure!r}"
            )
        if not 0.0 < self.partial_cka_move <= 1.0:
            raise ValueError(
                f"partial_cka_move is a drop in CKA and must lie in (0, 1], got "
                f"{self.partial_cka_move}"
            )


@dataclass
class DatasetSpec:
    """One table of a job: its texts and, optionally, the user's own split column."""

    name: str
    frame: pd.DataFrame
    text_column: str
    split_column: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task: a label column of one dataset, under a name unique in the job."""

    name: str
    dataset: str
    column: str


@dataclass
class JobSpec:
    """Everything the pipeline needs to produce a recommendation."""

    datasets: Sequence[DatasetSpec]
    tasks: Sequence[TaskSpec]
    model_name: str
    model_dir: Path
    training: TrainingConfig = field(default_factory=TrainingConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    candidates: Sequence[Sequence[Sequence[str]]] = ()
    verify: bool = False

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if len(names) < 2:
            raise ValueError("tasks: a job needs at least 2 tasks to group")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tasks: task {dupes[0]!r} is listed more than once")
        known = {d.name for d in self.datasets}
        for task in self.tasks:
            if task.dataset not in known:
                raise ValueError(
                    f"tasks: task {task.name!r} names unknown dataset {task.dataset!r}"
                )
