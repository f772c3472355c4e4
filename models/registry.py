"""Base models: resolved by name from the registry (or a local directory), loaded safely.

Loading never runs code from the model directory (``trust_remote_code=False``) and reads weights
only from safetensors files: a directory with only pickle (``.bin``) weights is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelError(ValueError):
    """A model name or directory that cannot be used; the message says why."""


def resolve_model(name_or_dir: str, registry: Mapping[str, str], *, allow_path: bool) -> Path:
    """The local directory of a registered model name, or (when ``allow_path``) of a directory.

    The API passes ``allow_path=False``: a client may name only registered models, never a path on
    the server.
    """
    if name_or_dir in registry:
        path = Path(registry[name_or_dir])
    elif allow_path and Path(name_or_dir).is_dir():
        path = Path(name_or_dir)
    else:
        known = ", ".join(sorted(registry)) or "none"
        hint = "" if allow_path else " (paths are not accepted here)"
        raise ModelError(f"model {name_or_dir!r} is not registered{hint}; known models: {known}")
    check_model_dir(path)
    return path


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {str(path)!r} has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelError(
            f"model directory {str(path)!r} has no .safetensors weights "
            "(pickle weights are never loaded)"
        )


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)


def load_encoder(path: Path) -> PreTrainedModel:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {
        "trust_remote_code": False,
        "use_safetensors": True,
        "local_files_only": True,
    }
    model = AutoModel.from_pretrained(str(path), **kwargs)
    return model
