"""Where the work runs: CUDA when present (bf16 autocast, TF32 matmuls), else CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error, not a CPU run."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
        # TF32 for the fp32 parts (optimizer maths, CKA prep); bf16 autocast does the rest.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    if preference != "auto":
        raise ValueError(f"device must be auto, cpu or cuda, not {preference!r}")
    return torch.device("cpu")


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; full fp32 on CPU (bf16 on these CPUs is slower, not faster)."""
    if device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
