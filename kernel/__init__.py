"""The shared kernel: errors, settings, storage helpers and the workspace layout.

Every labelloop package may import it; it imports none of them (imports run downward:
loop -> serving, labeling, pipelines -> kernel)."""

from kernel.errors import (
    BadInputError,
    ConfigError,
    FetchError,
    LabelloopError,
    LabelStudioError,
    NoModelError,
    ServiceUnavailableError,
    TrainingBusyError,
    TrainingError,
    WorkspaceError,
)
from kernel.settings import Settings

__all__ = [
    "BadInputError",
    "ConfigError",
    "FetchError",
    "LabelStudioError",
    "LabelloopError",
    "NoModelError",
    "ServiceUnavailableError",
    "Settings",
    "TrainingBusyError",
    "TrainingError",
    "WorkspaceError",
]
