"""Training launchers: where a training run executes. Same interface, chosen by settings.

`LocalLauncher` (embedded default) runs the training job (`python -m pipelines.job`)
as a local process. A Kubernetes launcher runs the same job in a GPU pod.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loop.errors import ConfigError
from loop.settings import Settings

__all__ = ["TrainingRequest", "TrainingResult", "Launcher", "LocalLauncher", "make_launcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRequest:
    run_id: str
    source: str  # git URL or path of the workspace
    data_commit: str


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    succeeded: bool
    model_tag: str | None = None
    accuracy: float | None = None
    n_labels: int | None = None
    metrics: dict | None = None
    error: str | None = None
    log_path: Path | None = None


class Launcher(Protocol):
    def run(self, request: TrainingRequest) -> TrainingResult:
        """Run one training to completion (or failure); never raises for a failed run."""
        ...


class LocalLauncher:
    """Runs the training job as a subprocess, sharing the workspace's DVC cache."""

    def __init__(self, settings: Settings):
        self._settings = settings

    def run(self, request: TrainingRequest) -> TrainingResult:
        workdir = self._settings.runs_dir / request.run_id
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "job.log"
        env = self._settings.child_env()
        # The pipeline's stages call `python -m pipelines...`: this interpreter first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        cmd = [
            sys.executable, "-m", "pipelines.job",
            "--run-id", request.run_id,
            "--source", request.source,
            "--commit", request.data_commit,
            "--workdir", str(workdir),
            "--cache-dir", str(self._settings.workspace / ".dvc" / "cache"),
        ]
        if self._settings.artifacts_url:
            cmd += ["--publish", self._settings.artifacts_url]
        log.info("training run %s on data %s (log: %s)", request.run_id, request.data_commit[:10], log_path)
        with log_path.open("w") as log_file:
            try:
                proc = subprocess.run(
                    cmd, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    timeout=self._settings.training_timeout_s, check=False,
                )
            except subprocess.TimeoutExpired:
                return TrainingResult(
                    request.run_id, False,
                    error=f"timed out after {self._settings.training_timeout_s:.0f}s", log_path=log_path,
                )
        result_file = workdir / "result.json"
        if proc.returncode != 0 or not result_file.exists():
            tail = log_path.read_text().strip().splitlines()[-3:]
            return TrainingResult(
                request.run_id, False,
                error=f"training job exited {proc.returncode}: {' | '.join(tail)}", log_path=log_path,
            )
        data = json.loads(result_file.read_text())
        return TrainingResult(
            run_id=request.run_id,
            succeeded=True,
            model_tag=data["model_tag"],
            accuracy=float(data["accuracy"]),
            n_labels=int(data["n_labels"]),
            metrics=data["metrics"],
            log_path=log_path,
        )


def make_launcher(settings: Settings) -> Launcher:
    if settings.launcher == "local":
        return LocalLauncher(settings)
    if settings.launcher == "kubernetes":
        from loop.kubernetes import KubernetesLauncher  # the kubernetes client loads only here

        return KubernetesLauncher(settings)
    raise ConfigError(f"unknown launcher {settings.launcher!r}")
