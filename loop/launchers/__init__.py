"""Training launchers: where a training run executes. Same interface, chosen by settings.

`LocalLauncher` (embedded default) runs the training job (`python -m pipelines.job`) as a
local process; `KubernetesLauncher` runs the same job as a Job on a GPU node. The
Kubernetes client is imported only when the Kubernetes launcher is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel.errors import ConfigError
from kernel.settings import Settings
from loop.launchers.base import Launcher, TrainingRequest, TrainingResult
from loop.launchers.local import LocalLauncher

if TYPE_CHECKING:
    from loop.launchers.kubernetes import KubernetesLauncher

__all__ = ["Launcher", "TrainingRequest", "TrainingResult", "LocalLauncher", "KubernetesLauncher", "make_launcher"]


def make_launcher(settings: Settings) -> Launcher:
    if settings.launcher == "local":
        return LocalLauncher(settings)
    if settings.launcher == "kubernetes":
        from loop.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher(settings.kubernetes, runs_dir=settings.runs_dir)
    raise ConfigError(f"unknown launcher {settings.launcher!r}")


def __getattr__(name: str) -> Any:
    if name == "KubernetesLauncher":  # the kubernetes client loads only here
        from loop.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
