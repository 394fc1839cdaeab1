"""Shared storage between pods: trained models, run results and the promotion record.

On one machine everything shares one BentoML store and one home directory, and this module
is not used. On Kubernetes a training pod, the scheduler pod and the serving replicas share
nothing but a URL (`LABELLOOP_ARTIFACTS_URL`: `s3://bucket/labelloop`, or a path on a shared
volume). Layout under it:

    models/<name>/<version>.bentomodel   BentoML model exports
    runs/<run id>/result.json            what a training pod hands back to the loop
    promotion.json                       the model every serving replica must serve

Any fsspec URL works; credentials come from the environment (e.g. AWS_* from a Secret).
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

__all__ = ["ArtifactStore", "storage_fs", "read_text", "write_text_atomic"]


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


class ArtifactStore:
    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(self.url)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._root, *parts)

    def _url(self, *parts: str) -> str:
        return posixpath.join(self.url, *parts)

    # --- models -----------------------------------------------------------------------
    def model_url(self, tag: str) -> str:
        name, version = tag.split(":", 1)
        return self._url("models", name, f"{version}.bentomodel")

    def export_model(self, tag: str) -> str:
        """Copy a model from the local BentoML store to shared storage (idempotent)."""
        import bentoml

        name, version = tag.split(":", 1)
        target = self._path("models", name, f"{version}.bentomodel")
        if not self._fs.exists(target):
            self._fs.makedirs(posixpath.dirname(target), exist_ok=True)
            bentoml.models.export_model(tag, self.model_url(tag))
        return self.model_url(tag)

    def ensure_local_model(self, tag: str) -> None:
        """Import a model into the local BentoML store unless it is there already."""
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            bentoml.models.get(tag)
        except NotFound:
            bentoml.models.import_model(self.model_url(tag))

    # --- run results and promotion ----------------------------------------------------------
    def write_json(self, relative: str, data: dict[str, Any]) -> None:
        write_text_atomic(self._url(relative), json.dumps(data, indent=2) + "\n")

    def read_json(self, relative: str) -> dict[str, Any] | None:
        text = read_text(self._url(relative))
        return None if text is None else json.loads(text)

    @staticmethod
    def result_path(run_id: str) -> str:
        return posixpath.join("runs", run_id, "result.json")
