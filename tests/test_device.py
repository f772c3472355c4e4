"""Device choice: CUDA when present (bf16 autocast, TF32), CPU otherwise, forced by a setting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.device import autocast, resolve_device

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_when_forced() -> None:
    assert resolve_device("cpu").type == "cpu"


def test_auto_matches_availability() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")


def test_cpu_autocast_keeps_fp32() -> None:
    with autocast(torch.device("cpu")):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32


@pytest.mark.requires_cuda
@requires_cuda
def test_losses_are_fp32_under_cuda_autocast() -> None:
    """Training losses are taken in float32 from bf16 logits, the class weights included."""
    from torch import nn

    device = torch.device("cuda")
    weight = torch.tensor([0.5, 2.0], device=device)
    logits = torch.randn(8, 2, device=device, requires_grad=True)
    labels = torch.tensor([0, 1] * 4, device=device)
    with autocast(device):
        low = logits @ torch.eye(2, device=device)
        assert low.dtype == torch.bfloat16
        loss = nn.CrossEntropyLoss(weight=weight)(low.float(), labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.requires_cuda
@requires_cuda
@pytest.mark.parametrize("class_weights", ["none", "balanced"])
def test_a_tiny_job_runs_on_cuda(tiny_bert: Path, class_weights: str) -> None:
    from models.grouping import Thresholds
    from models.options import AnalysisConfig, DatasetSpec, JobSpec, TaskSpec, TrainingConfig
    from models.pipeline import run_job
    from models.synth import SynthSpec, generate

    frame, _ = generate(SynthSpec(rows=200, features=(2,), seed=3))
    spec = JobSpec(
        datasets=[DatasetSpec("d", frame, "text")],
        tasks=[TaskSpec("a", "d", "product"), TaskSpec("b", "d", "product_flag")],
        model_name="tiny",
        model_dir=tiny_bert,
        training=TrainingConfig(
            epochs=1, lr=1e-3, batch_size=16, probe_size=64, class_weights=class_weights
        ),
        analysis=AnalysisConfig(device="cuda", align_steps=3, thresholds=Thresholds()),
        verify=True,
    )
    rec = run_job(spec)
    assert rec["settings"]["device"].startswith("cuda")
    assert torch.backends.cuda.matmul.allow_tf32
    assert rec["settings"]["training"]["class_weights"] == class_weights
    assert len(rec["verification"]) == 1
    for task in rec["tasks"]:
        stl = task["stl"]
        assert 0.0 <= stl["macro_f1"] <= 1.0 and stl["baseline_macro_f1"] is not None
        assert all(math.isfinite(x) for x in stl["loss_curve"])
