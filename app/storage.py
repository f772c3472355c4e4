"""The artifact store of the API: uploaded dataset files, under one directory.

Layout: ``<root>/uploads/<owner digest>/<dataset id>.<format>``. The owner's directory is named by
a digest of the owner (owners are free-form strings, never path components). Files are written
atomically: the bytes go to a temporary file in the same directory, which is flushed, fsynced
and then renamed into place (``os.replace``), so a reader never sees a half-written file and a
crash leaves at most a stray ``.tmp`` file behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path

__all__ = ["ArtifactStore", "StorageError"]

_FORMATS = ("csv", "jsonl", "parquet")


class StorageError(ValueError):
    """A path outside the store, or an argument that cannot name a stored file."""


class ArtifactStore:
    """Uploaded files under ``root`` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def _owner_dir(self, owner: str) -> Path:
        digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]
        return self.root / "uploads" / digest

    def upload_path(self, owner: str, dataset_id: str, fmt: str) -> Path:
        """Where the dataset's file lives (whether or not it exists yet)."""
        if fmt not in _FORMATS:
            raise StorageError(f"format must be one of {', '.join(_FORMATS)}, got {fmt!r}")
        try:
            canonical = str(uuid.UUID(dataset_id))
        except (ValueError, TypeError, AttributeError):
            raise StorageError(f"dataset id {dataset_id!r} is not a UUID") from None
        return self._owner_dir(owner) / f"{canonical}.{fmt}"

    def put_upload(self, owner: str, dataset_id: str, data: bytes, fmt: str) -> Path:
        """Write ``data`` atomically as the dataset's file; return its path."""
        path = self.upload_path(owner, dataset_id, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return path

    def _inside(self, path: Path | str) -> Path:
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_relative_to(self.root):
            raise StorageError(f"{str(path)!r} is not inside the artifact store")
        return resolved

    def read(self, path: Path | str) -> bytes:
        """The bytes of a stored file (``FileNotFoundError`` when it is gone)."""
        return self._inside(path).read_bytes()

    def delete(self, path: Path | str) -> bool:
        """Remove a stored file; ``False`` (no error) when it did not exist."""
        target = self._inside(path)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        return True
