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
import posixpath
from typing import Any

from kernel.storage import read_text, write_text_atomic

__all__ = ["ArtifactStore"]


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

    def has_model(self, tag: str) -> bool:
        name, version = tag.split(":", 1)
        return bool(self._fs.exists(self._path("models", name, f"{version}.bentomodel")))

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
