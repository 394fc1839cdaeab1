"""The loop: collect -> commit -> retrain -> promote -> re-score, and the CLI.

Exports resolve lazily: pipeline stages import `loop.errors` and must not pay for
the Label Studio SDK, DVC and the scheduler on every `dvc repro` step.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loop.core import CollectResult, Loop, LoopStatus
    from loop.errors import LabelloopError
    from loop.settings import Settings

__all__ = ["CollectResult", "LabelloopError", "Loop", "LoopStatus", "Settings"]

_HOMES = {
    "CollectResult": "loop.core",
    "Loop": "loop.core",
    "LoopStatus": "loop.core",
    "LabelloopError": "loop.errors",
    "Settings": "loop.settings",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'loop' has no attribute {name!r}")
