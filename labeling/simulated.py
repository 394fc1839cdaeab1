"""What people do in Label Studio, for the demo, the tests and the benchmarks.

`SimulatedAnnotator` takes the task Label Studio's queue serves, labels, relabels, deletes
and skips, adds colleagues, presses "Retrieve predictions", and reads back what Label Studio
holds. The product (loop/, serving/) never uses it. It talks to Label Studio through the
gateway's SDK client and its one retry/translation path (`_read` for reads, `_call` for
writes), so errors look the same as the product's.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernel.errors import LabelStudioError
from labeling.gateway import LabelStudioGateway, Task, _choice_result, _task
from labeling.noise import AnnotatorNoise

__all__ = ["QueueSettings", "ReviewState", "SimulatedAnnotator"]


@dataclass(frozen=True)
class QueueSettings:
    """How a project's queue serves tasks (what `LabelStudioGateway.align_queue` sets)."""

    sampling: str
    skip_queue: str
    model_version: str


@dataclass(frozen=True)
class ReviewState:
    """Whether a task is done: Label Studio serves it until `overlap` annotators labeled it."""

    overlap: int
    is_labeled: bool


class SimulatedAnnotator:
    """An annotator working as the gateway's API-key user (others through `completed_by`)."""

    def __init__(self, gateway: LabelStudioGateway):
        self._gateway = gateway
        self._client = gateway._client

    # --- the queue --------------------------------------------------------------------
    def next_task(self, project_id: int, view: int | None = None) -> Task | None:
        """The task Label Studio's queue hands this annotator next (None when done); with a
        `view`, the next task in that Data Manager tab's order. Label Studio locks it: the
        same task comes back until it is annotated or skipped."""
        raw = self._gateway._get(f"api/projects/{project_id}/next/" + (f"?view={view}" if view else ""))
        return _task(raw) if raw and raw.get("id") else None

    def label_next(self, project_id: int, truth: Mapping[str, str], n: int, *,
                   noise: AnnotatorNoise | None = None, completed_by: int | None = None) -> list[str]:
        """Label up to `n` tasks in queue order, answering from `truth` (image name -> label),
        wrongly where `noise` says so. `completed_by` records the answers as another user's
        (`add_user`), so that this annotator (the API key's user, whose queue `/next/` serves)
        has not labeled them and can review them later. Returns the image names labeled, in order."""
        classes = sorted(set(truth.values()))
        labeled = []
        for _ in range(n):
            task = self.next_task(project_id)
            if task is None:
                break
            right = truth[task.image_name]
            self.annotate(task.id, noise.answer(task.image_name, right, classes) if noise else right,
                          completed_by=completed_by)
            labeled.append(task.image_name)
        return labeled

    # --- annotations ------------------------------------------------------------------
    def annotate(self, task_id: int, label: str, *, completed_by: int | None = None, lead_time_s: float = 1.0) -> int:
        """A new annotation choosing `label`; `completed_by`: another user's id (`add_user`)."""
        by = {"completed_by": completed_by} if completed_by is not None else {}
        return self._create_annotation(task_id, _choice_result(label), lead_time_s, **by)

    def skip(self, task_id: int) -> int:
        """Press "Skip": a cancelled annotation, which is not a label."""
        return self._create_annotation(task_id, [], 1.0, was_cancelled=True)

    def _create_annotation(self, task_id: int, result: list[dict[str, Any]], lead_time_s: float, **fields: Any) -> int:
        annotation = self._gateway._call("create an annotation", self._client.annotations.create,
                                         id=task_id, result=result, lead_time=lead_time_s, **fields)
        return int(annotation.id)

    def update_annotation(self, annotation_id: int, label: str) -> None:
        self._gateway._call("update an annotation", self._client.annotations.update, id=annotation_id,
                            result=_choice_result(label))

    def delete_annotation(self, annotation_id: int) -> None:
        self._gateway._call("delete an annotation", self._client.annotations.delete, id=annotation_id)

    def add_user(self) -> int:
        """A new user of the organization (a second or third annotator); returns its id."""
        tag = secrets.token_hex(4)
        user = self._gateway._call("create a user", self._client.users.create,
                                   username=f"annotator-{tag}", email=f"annotator-{tag}@example.com")
        return int(user.id)

    # --- the Data Manager ---------------------------------------------------------------
    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int]) -> None:
        """The Data Manager's "Retrieve predictions": Label Studio asks the connected backend
        for these tasks in ONE `/predict` request and stores what it answers."""
        from label_studio_sdk.actions.types import PrepareParamsRequestRequestSelectedItemsIncluded

        self._gateway._call(
            "retrieve predictions", self._client.actions.create,
            id="retrieve_tasks_predictions", project=project_id,
            selected_items=PrepareParamsRequestRequestSelectedItemsIncluded(all_=False, included=list(task_ids)),
        )

    def delete_project(self, title: str) -> bool:
        """Remove the project with this title (a fresh demo); False if there is none."""
        found = self._gateway.find_project(title)
        if found is None:
            return False
        self._gateway._call("delete the project", self._client.projects.delete, id=found)
        return True

    # --- reading back what Label Studio holds ---------------------------------------------
    def all_tasks(self, project_id: int) -> list[Task]:
        return self._gateway._tasks(project_id, None)

    def task_data(self, task_id: int) -> dict[str, Any]:
        """The task's data as Label Studio holds it (what the Data Manager's columns show)."""
        raw = self._gateway._get(f"api/tasks/{task_id}/?resolve_uri=false")
        if raw is None:
            raise LabelStudioError(f"task {task_id} does not exist in Label Studio at {self._gateway.url}")
        return dict(raw.get("data") or {})

    def review_state(self, task_id: int) -> ReviewState:
        raw = self._gateway._get(f"api/tasks/{task_id}/")
        if raw is None:
            raise LabelStudioError(f"task {task_id} does not exist in Label Studio at {self._gateway.url}")
        return ReviewState(overlap=int(raw["overlap"]), is_labeled=bool(raw["is_labeled"]))

    def queue_settings(self, project_id: int) -> QueueSettings:
        project = self._gateway._read("read the project", self._client.projects.get, id=project_id)
        return QueueSettings(sampling=str(project.sampling), skip_queue=str(project.skip_queue),
                             model_version=str(project.model_version or ""))

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        preds = self._gateway._read("list predictions", self._client.predictions.list, task=task_id)
        return [p.model_dump() for p in preds]

    def prediction_scores(self, project_id: int, model_version: str) -> dict[int, float]:
        """Task id -> score of this model version's predictions (what the queue orders by;
        a task with several, e.g. re-queued for review, is served by its lowest)."""
        scores: dict[int, float] = {}
        for p in self._gateway._read("list predictions", self._client.predictions.list, project=project_id):
            if p.model_version == model_version and p.score is not None:
                scores[int(p.task)] = min(float(p.score), scores.get(int(p.task), float("inf")))
        return scores
