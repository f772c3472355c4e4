"""Stage 1: the single-task fine-tunes (one per task; the service fans them out to workers).

For each task: fine-tune the base encoder with a fresh linear head, score it on the task's held-out
split (macro-F1 and accuracy), keep its weights, and read the pooled hidden states of every layer on
the probe set, which stage 2 compares across tasks.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.artifacts import save_tensors
from models.options import TrainingConfig
from models.training import (
    CancelCheck,
    StepCallback,
    TaskModel,
    TokenizedTask,
    fit,
    layer_representations,
    predict,
    scores,
)


@dataclass
class SingleTaskResult:
    task: str
    macro_f1: float
    accuracy: float
    steps: int
    seconds: float
    examples: int
    loss_curve: list[float]
    reps: torch.Tensor = field(repr=False)  # (L+1, n_probe, d) float32
    val_preds: list[int] = field(default_factory=list, repr=False)
    weights_path: str | None = None
    reps_path: str | None = None
    seed: int = 0

    def to_record(self) -> dict[str, Any]:
        """Everything but the representations, JSON-ready (the service stores it per task)."""
        record = {k: v for k, v in vars(self).items() if k != "reps"}
        record["loss_curve"] = [float(x) for x in self.loss_curve]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], reps: torch.Tensor) -> SingleTaskResult:
        return cls(**{**record, "reps": reps})


def finetune_task(
    *,
    pretrained: nn.Module,
    task_name: str,
    data: TokenizedTask,
    probe_ids: list[list[int]],
    cfg: TrainingConfig,
    device: torch.device,
    pad_id: int,
    seed: int | None = None,
    artifact_dir: Path | None = None,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> SingleTaskResult:
    """Fine-tune a copy of ``pretrained`` on one task; ``pretrained`` itself is left untouched."""
    seed = cfg.seed if seed is None else seed
    model = TaskModel(copy.deepcopy(pretrained), {task_name: data.n_classes}, seed=seed).to(device)
    result = fit(
        model,
        {task_name: data},
        cfg,
        device,
        pad_id=pad_id,
        seed=seed,
        on_step=on_step,
        should_cancel=should_cancel,
    )
    preds = predict(model, task_name, data.val_ids, device, pad_id=pad_id)
    metrics = scores(data.val_labels, preds, data.n_classes)
    reps = layer_representations(model.encoder, probe_ids, device, pad_id=pad_id)
    weights_path = reps_path = None
    if artifact_dir is not None:
        stem = artifact_dir / f"stl-{re.sub(r'[^A-Za-z0-9_.-]', '_', task_name)}-seed{seed}"
        weights_path = str(save_tensors(stem.with_suffix(".safetensors"), model.state_dict()))
        reps_path = str(save_tensors(stem.with_suffix(".reps.safetensors"), {"reps": reps}))
    return SingleTaskResult(
        task=task_name,
        macro_f1=metrics["macro_f1"],
        accuracy=metrics["accuracy"],
        steps=result.steps,
        seconds=result.seconds,
        examples=result.examples,
        loss_curve=result.loss_curve,
        reps=reps,
        val_preds=preds.tolist(),
        weights_path=weights_path,
        reps_path=reps_path,
        seed=seed,
    )
