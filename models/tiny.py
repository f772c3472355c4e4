"""A tiny random BERT: the unit tests' model and the benchmark's capacity-limited encoder.

The default (2 layers, hidden 32) trains in seconds on a CPU. With a smaller width it is a
*capacity-limited* encoder: tasks on unrelated features then compete for its few dimensions,
which is how the quality benchmark builds groups where one multi-task model really loses.
"""

from __future__ import annotations

import string
from pathlib import Path

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


def build_tiny_bert(
    path: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0
) -> Path:
    """Write a random BERT with a word-level tokenizer over the synthetic vocabulary to ``path``.

    Texts from :mod:`models.synth` tokenize into whole words, so the model can learn the planted
    tasks from scratch. Returns ``path``.
    """
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
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(path), safe_serialization=True)
    return path
