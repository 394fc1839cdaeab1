"""What every launcher shares: the request, the result, the protocol, and how a training
job's result record (`pipelines.job`'s ``result.json``) becomes a `TrainingResult`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TrainingRequest", "TrainingResult", "Launcher", "result_from_record"]


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
    judged_by: str | None = None  # test | eval | cv (pipelines.prepare)
    judged_on: dict[str, str] | None = None  # image -> label of the set that judged it
    error: str | None = None
    log_path: Path | None = None


class Launcher(Protocol):
    """Where a training run executes. A launcher may set ``resumable = True`` when a
    restarted scheduler can re-attach to a run it started (same run id)."""

    def run(self, request: TrainingRequest) -> TrainingResult:
        """Run one training to completion (or failure); never raises for a failed run."""
        ...


def result_from_record(run_id: str, record: dict[str, Any], log_path: Path | None) -> TrainingResult:
    """A succeeded run, from the result record the training job wrote."""
    return TrainingResult(
        run_id=run_id,
        succeeded=True,
        model_tag=record["model_tag"],
        accuracy=float(record["accuracy"]),
        n_labels=int(record["n_labels"]),
        metrics=record["metrics"],
        judged_by=record.get("judged_by", "test"),
        judged_on=record.get("judged_on"),
        log_path=log_path,
    )
