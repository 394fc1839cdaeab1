"""One exception tree for labelloop.

Every message says what to do next. Each edge translates these once: the CLI maps them
to exit codes (`exit_code`, `loop.cli.main`), the service to HTTP statuses
(`http_status`, `serving.errors`), the gateway turns Label Studio's failures into
`LabelStudioError`. Anything else that escapes is a bug and surfaces as one.
"""

from __future__ import annotations

__all__ = [
    "LabelloopError",
    "ConfigError",
    "WorkspaceError",
    "LabelStudioError",
    "NoModelError",
    "TrainingError",
    "TrainingBusyError",
    "BadInputError",
    "FetchError",
    "ServiceUnavailableError",
    "OverloadedError",
]


class LabelloopError(Exception):
    """Base of every error labelloop raises on purpose."""

    exit_code: int = 1
    http_status: int = 500

    def __init_subclass__(cls, *, exit_code: int | None = None, http_status: int | None = None,
                          **kwargs: object) -> None:
        """A subclass names its codes in its class line; a sub-subclass inherits them."""
        super().__init_subclass__(**kwargs)
        cls.exit_code = cls.exit_code if exit_code is None else exit_code
        cls.http_status = cls.http_status if http_status is None else http_status


class ConfigError(LabelloopError, exit_code=2, http_status=500):
    """A setting is missing or invalid."""


class WorkspaceError(LabelloopError, exit_code=3, http_status=500):
    """The data workspace (git + DVC) is missing, dirty or cannot be written."""


class LabelStudioError(LabelloopError, exit_code=4, http_status=502):
    """Label Studio is unreachable or refused a call."""


class FetchError(LabelloopError, exit_code=4, http_status=502):
    """A task's image could not be fetched (unreachable host, 401/404 from Label Studio):
    a reachability or credentials problem, not the client's bad input."""


class NoModelError(LabelloopError, exit_code=5, http_status=503):
    """No trained/promoted model is available yet."""


class TrainingError(LabelloopError, exit_code=6, http_status=500):
    """A training run failed; the serving model is unchanged."""


class BadInputError(LabelloopError, exit_code=7, http_status=400):
    """A request or file cannot be used (not an image, wrong shape...)."""


class ServiceUnavailableError(LabelloopError, exit_code=8, http_status=503):
    """The labelloop service (BentoML) is not running or not reachable at its URL."""


class OverloadedError(ServiceUnavailableError):
    """The service has more waiting than it takes (its 503 carries Retry-After)."""


class TrainingBusyError(LabelloopError, exit_code=9, http_status=409):
    """Another training run holds the training lease."""
