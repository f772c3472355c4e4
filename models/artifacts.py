"""Artifacts on disk (fine-tuned weights, probe representations), always written atomically.

A file is written beside its final name and renamed into place, so a reader never sees half a file,
even if the writer is killed mid-write. Tensors are stored as safetensors only (no pickle).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
