"""A launcher whose runs are scripted: (succeeded, accuracy) per run, model tags m:1, m:2..."""

from __future__ import annotations

from loop.launchers import TrainingRequest, TrainingResult


class ScriptedLauncher:
    def __init__(self, outcomes: list[tuple[bool, float]]):
        self.outcomes = outcomes
        self.requests: list[TrainingRequest] = []

    def run(self, request: TrainingRequest) -> TrainingResult:
        self.requests.append(request)
        ok, accuracy = self.outcomes.pop(0)
        if not ok:
            return TrainingResult(request.run_id, False, error="pod evicted")
        return TrainingResult(request.run_id, True, model_tag=f"m:{len(self.requests)}",
                              accuracy=accuracy, n_labels=4, metrics={"accuracy": accuracy})
