"""Stage 5: verification. Train the MTL model of a group and compare it with the STL models.

Shared encoder, one head per task, the sum of the task losses optimised one task batch per step with
tasks sampled in proportion to their data and the same epochs over each task's data as in STL
(``training.build_schedule``). Each task is scored on its held-out split.

The group *matches* when no task's MTL macro-F1 falls below its STL macro-F1 by more than the
tolerance delta = max(1 F1 point, the noise of the comparison). The noise:
- with one seed (the service's default), twice the bootstrap standard error of the paired
  difference MTL - STL over the held-out examples (``noise_method = "bootstrap"``);
- with several seeds, twice the standard error of the mean difference across seeds
  (``noise_method = "seeds"``), or the bootstrap one if that is larger.
Each task is labelled helps (> +delta), neutral, or hurts (< -delta).

Each task also carries its per-seed differences (``seed_deltas``): with several seeds, one run
that fell far short widens the tolerance (the seed standard error grows with it), and the mean can
stay within it; the per-seed values show it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from models.options import TrainingConfig
from models.training import (
    CancelCheck,
    StepCallback,
    TaskModel,
    TokenizedTask,
    fit,
    predict,
    scores,
)


@dataclass
class MTLResult:
    tasks: list[str]
    macro_f1: dict[str, float]
    accuracy: dict[str, float]
    val_preds: dict[str, list[int]]
    steps: int
    seconds: float
    seed: int


def train_mtl(
    *,
    pretrained: nn.Module,
    tasks: Mapping[str, TokenizedTask],
    cfg: TrainingConfig,
    device: torch.device,
    pad_id: int,
    seed: int,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> MTLResult:
    model = TaskModel(
        copy.deepcopy(pretrained), {n: t.n_classes for n, t in tasks.items()}, seed=seed
    ).to(device)
    result = fit(
        model,
        tasks,
        cfg,
        device,
        pad_id=pad_id,
        seed=seed,
        on_step=on_step,
        should_cancel=should_cancel,
    )
    f1s, accs, preds = {}, {}, {}
    for name, task in tasks.items():
        pred = predict(model, name, task.val_ids, device, pad_id=pad_id)
        metrics = scores(task.val_labels, pred, task.n_classes)
        f1s[name], accs[name], preds[name] = metrics["macro_f1"], metrics["accuracy"], pred.tolist()
    return MTLResult(
        tasks=list(tasks),
        macro_f1=f1s,
        accuracy=accs,
        val_preds=preds,
        steps=result.steps,
        seconds=result.seconds,
        seed=seed,
    )


def bootstrap_se(
    labels: np.ndarray,
    stl_preds: np.ndarray,
    mtl_preds: np.ndarray,
    n_classes: int,
    *,
    rounds: int = 200,
    seed: int = 0,
) -> float:
    """Standard error of macro-F1(MTL) - macro-F1(STL), resampling held-out examples in pairs."""
    rng = np.random.default_rng(seed)
    classes = list(range(n_classes))
    diffs = np.empty(rounds)
    for r in range(rounds):
        idx = rng.integers(0, len(labels), len(labels))
        y = labels[idx]
        diffs[r] = f1_score(
            y, mtl_preds[idx], labels=classes, average="macro", zero_division=0
        ) - f1_score(y, stl_preds[idx], labels=classes, average="macro", zero_division=0)
    return float(diffs.std(ddof=1))


def decision_margin(delta: float, tolerance: float, se: float) -> float:
    """How decisively one task's comparison came out: ``(delta + tolerance) / se``, the distance
    from the "hurts" boundary in standard errors of the difference (positive: within the
    tolerance; between -1 and 1: one standard error would move it across). ``se`` is the standard
    error behind the noise estimate (half of it): the per-seed differences' or the held-out
    bootstrap's divided by sqrt(seeds), whichever is larger, with several seeds; the bootstrap's
    with one. Without spread the margin is infinite, with the sign of ``delta + tolerance``."""
    edge = delta + tolerance
    if se > 0:
        return edge / se
    return math.copysign(math.inf, edge) if edge != 0 else 0.0


def compare_group(
    group: Sequence[str],
    tasks: Mapping[str, TokenizedTask],
    stl: Mapping[str, Sequence[tuple[float, Sequence[int]]]],
    mtl: Sequence[MTLResult],
    *,
    tolerance: float,
    predicted: bool,
) -> dict[str, object]:
    """One verification entry. ``stl[task]`` and ``mtl`` hold one result per seed, same order."""
    per_task = []
    matches = True
    n_seeds = len(mtl)
    method = "seeds" if n_seeds > 1 else "bootstrap"
    margin = math.inf
    for name in group:
        task = tasks[name]
        stl_f1 = np.array([f1 for f1, _ in stl[name][:n_seeds]])
        mtl_f1 = np.array([m.macro_f1[name] for m in mtl])
        diffs = mtl_f1 - stl_f1
        delta = float(diffs.mean())
        boot_se = bootstrap_se(
            task.val_labels,
            np.asarray(stl[name][0][1]),
            np.asarray(mtl[0].val_preds[name]),
            task.n_classes,
        )
        noise = 2.0 * boot_se
        if n_seeds > 1:
            seed_se = float(diffs.std(ddof=1)) / np.sqrt(n_seeds)
            noise = max(noise / np.sqrt(n_seeds), 2.0 * seed_se)
        tol = max(tolerance, noise)
        effect = "helps" if delta > tol else "hurts" if delta < -tol else "neutral"
        matches = matches and effect != "hurts"
        # The standard error the noise estimate stands on (noise = 2 SE), whichever set it.
        margin = min(margin, decision_margin(delta, tol, float(noise) / 2.0))
        per_task.append(
            {
                "task": name,
                "stl_macro_f1": float(stl_f1.mean()),
                "mtl_macro_f1": float(mtl_f1.mean()),
                "delta": delta,
                "tolerance": tol,
                "effect": effect,
                "stl_spread": float(stl_f1.max() - stl_f1.min()),
                "mtl_spread": float(mtl_f1.max() - mtl_f1.min()),
                "seed_deltas": [float(d) for d in diffs],
            }
        )
    return {
        "tasks": list(group),
        "per_task": per_task,
        "matches": matches,
        "predicted": predicted,
        "outcome": "confirmed" if matches == predicted else "refuted",
        "noise_method": method,
        "margin_se": float(margin) if math.isfinite(margin) else None,
        "seeds": [m.seed for m in mtl],
        "steps": sum(m.steps for m in mtl),
        "seconds": sum(m.seconds for m in mtl),
    }
