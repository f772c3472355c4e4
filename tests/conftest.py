"""Shared fixtures: a tiny random BERT (2 layers, hidden 32) built on disk once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.tiny import build_tiny_bert
from tests.celery_fixtures import broker, worker_db  # noqa: F401 (fixtures, found by name)
from tests.db_fixtures import (  # noqa: F401 (fixtures, found by name)
    database_url,
    pg_engine,
    postgres_empty_url,
    session,
    sqlite_engine,
    sqlite_session,
    sqlite_url,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models run ~30x faster on one thread: waking a second one costs more than the op."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
