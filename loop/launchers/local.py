"""`LocalLauncher` (the embedded default): the training job (`python -m pipelines.job`)
as a local process, sharing the workspace's DVC cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kernel.settings import Settings
from loop.launchers.base import TrainingRequest, TrainingResult, result_from_record

__all__ = ["LocalLauncher"]

log = logging.getLogger(__name__)

#: Less free space than this where runs live, after a failed run, is named as its cause.
LOW_SPACE_BYTES = 16 * 2**20


class LocalLauncher:
    """Runs the training job as a subprocess, sharing the workspace's DVC cache."""

    #: A run interrupted with its scheduler died with it: it is marked failed, not resumed.
    resumable = False

    def __init__(self, settings: Settings):
        self._settings = settings

    def run(self, request: TrainingRequest) -> TrainingResult:
        workdir = self._settings.runs_dir / request.run_id
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "job.log"
        env = self._settings.child_env()
        # The pipeline's stages call `python -m pipelines...`: this interpreter first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["KERAS_BACKEND"] = self._settings.keras_backend
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
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            error = f"training job exited {proc.returncode}: {' | '.join(tail)}"
            free = shutil.disk_usage(workdir).free
            if free < LOW_SPACE_BYTES:  # the job could not even write its log to say so
                error = (f"no space left on the device of {self._settings.runs_dir} ({free // 2**20} MiB free): "
                         f"free space there (or move LABELLOOP_HOME) and train again; {error}")
            return TrainingResult(request.run_id, False, error=error, log_path=log_path)
        return result_from_record(request.run_id, json.loads(result_file.read_text()), log_path)
