"""One exception tree for labelloop.

Every message says what to do next. The CLI maps these types to exit codes
(`loop.cli.main`), the service maps them to HTTP statuses (`serving.service`).
"""

from __future__ import annotations

__all__ = [
    "LabelloopError",
    "ConfigError",
    "WorkspaceError",
    "LabelStudioError",
    "NoModelError",
    "TrainingError",
    "BadInputError",
]


class LabelloopError(Exception):
    """Base of every error labelloop raises on purpose."""

    exit_code = 1


class ConfigError(LabelloopError):
    """A setting is missing or invalid."""

    exit_code = 2


class WorkspaceError(LabelloopError):
    """The data workspace (git + DVC) is missing, dirty or cannot be written."""

    exit_code = 3


class LabelStudioError(LabelloopError):
    """Label Studio is unreachable or refused a call."""

    exit_code = 4


class NoModelError(LabelloopError):
    """No trained/promoted model is available yet."""

    exit_code = 5


class TrainingError(LabelloopError):
    """A training run failed; the serving model is unchanged."""

    exit_code = 6


class BadInputError(LabelloopError):
    """A request or file cannot be used (not an image, wrong shape...)."""

    exit_code = 7
