"""Reading and writing small files on a local path or any fsspec URL (s3://, a shared volume).

Shared by the promotion record, the webhook event spool and training results: the service,
the scheduler and training pods may share nothing but such a URL.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

__all__ = ["storage_fs", "read_text", "write_text_atomic"]


def storage_fs(location: Path | str):
    """(filesystem, path) for an fsspec URL (s3://, file://, memory://...); None for a
    plain local path, which the callers handle with pathlib."""
    if isinstance(location, str) and "://" in location:
        import fsspec

        return fsspec.core.url_to_fs(location)
    return None


def read_text(location: Path | str) -> str | None:
    """A whole file from a local path or a URL; None if it does not exist."""
    if remote := storage_fs(location):
        fs, path = remote
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as src:
            return src.read()
    path = Path(location)
    return path.read_text() if path.exists() else None


def write_text_atomic(location: Path | str, text: str) -> None:
    """Written whole under a temporary name, then moved: readers see the old file or the
    new one, never half of one (on object stores a single PUT is atomic anyway)."""
    if remote := storage_fs(location):
        fs, path = remote
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(f"{path}.tmp", "w") as out:
            out.write(text)
        fs.mv(f"{path}.tmp", path)
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
