"""Shared fixtures: a tiny random BERT (2 layers, hidden 32) built on disk once per session."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest

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


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COMMON = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "of",
    "to",
    "in",
    "is",
    "it",
    "on",
    "for",
    "with",
    "this",
    "that",
    "was",
    "not",
    "no",
    "yes",
    "good",
    "bad",
    "text",
    "report",
    ".",
    ",",
    ";",
    ":",
    "!",
    "?",
    "'",
    '"',
    "-",
    "(",
    ")",
]


def build_tiny_bert(path: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from models.synth import vocabulary

    words = list(
        dict.fromkeys([*SPECIALS, *COMMON, *string.ascii_lowercase, *string.digits, *vocabulary()])
    )
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
