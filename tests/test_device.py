"""Device choice: CUDA when present (bf16 autocast, TF32), CPU otherwise, forced by a setting."""

from __future__ import annotations

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
def test_a_tiny_job_runs_on_cuda(tiny_bert: Path) -> None:
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
        training=TrainingConfig(epochs=1, lr=1e-3, batch_size=16, probe_size=64),
        analysis=AnalysisConfig(device="cuda", align_steps=3, thresholds=Thresholds()),
        verify=True,
    )
    rec = run_job(spec)
    assert rec["settings"]["device"].startswith("cuda")
    assert torch.backends.cuda.matmul.allow_tf32
    assert len(rec["verification"]) == 1
