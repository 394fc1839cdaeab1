"""The queue keeper: what Label Studio serves annotators next.

After a promotion the unlabeled pool is re-scored through the service and pushed in bulk;
before any model exists it is queued in a diversity order (cold start); tasks whose
annotators disagree, and suspect labels (`loop.quality`), go back to the top for one more
annotator (review); after each push the project is aligned so that its queue follows that
model version's scores. With `query_class_balance`, every batch of `query_batch_size` tasks
takes the predicted classes in turn (`pipelines.strategies.class_balanced_order`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from kernel.errors import LabelloopError, ServiceUnavailableError
from kernel.layout import LABELS_DIR
from labeling import TaskPrediction
from loop.context import LoopContext
from loop.quality import REVIEW_FIELD, record_pool_predictions
from pipelines.images import decode_image, preprocess
from pipelines.models import pretrained_features
from pipelines.params import Params
from pipelines.labels import current_annotations, held_back, read_suspects, suspect_states
from pipelines.pool import eval_order_key
from pipelines.strategies import (
    BatchQueryStrategy,
    QueryStrategy,
    class_balanced_order,
    cold_start_order,
    order_to_scores,
)
from serving import ImagePrediction, PredictionClient, read_promotion

__all__ = ["QueueKeeper", "COLD_START_VERSION", "REVIEW_SCORE", "Progress", "interleave_scores"]

log = logging.getLogger(__name__)

#: The queue's model version before any model exists (the cold-start diversity order).
COLD_START_VERSION = "cold-start"
#: Label Studio keeps only scores in [0, 1] (it drops others silently); queue positions
#: are > 0 (`order_to_scores`), so a task re-queued for review at 0 goes first.
REVIEW_SCORE = 0.0
Progress = Callable[[str, int, int], None]  # (what, done, total)
#: After every pool task: the end of the queue (Label Studio keeps scores in [0, 1]).
END_SCORE = 1.0


def interleave_scores(pool_scores: list[float], n: int, *, every: int | None) -> list[float]:
    """Queue scores for `n` tasks to serve among pool tasks scored `pool_scores` (lowest
    first): the j-th after the (j+1)*(every-1)-th pool task, so one task in every `every`;
    with `every` None, or past the pool's end, after every pool task."""
    ordered = sorted(pool_scores)
    out = []
    for j in range(n):
        k = (j + 1) * (every - 1) if every else len(ordered)
        if k >= len(ordered):
            out.append(END_SCORE)
        else:  # between the k-th and the (k+1)-th pool task
            out.append((ordered[k - 1] + ordered[k]) / 2)
    return out


class QueueKeeper:
    def __init__(self, ctx: LoopContext, strategy: QueryStrategy):
        self.ctx = ctx
        self.strategy = strategy

    def _client(self) -> PredictionClient:
        return PredictionClient.for_settings(self.ctx.settings.serving)

    def rescore(self, tag: str | None = None, *, progress: Progress | None = None) -> int:
        """Predictions of the serving model for every unlabeled task, pushed in bulk; then the
        queue serves the lowest score (most informative) first. No model yet: cold start.
        Raises ServiceUnavailableError when the service is down or does not switch to `tag`."""
        ctx = self.ctx
        ws = ctx.require_workspace()
        record = read_promotion(ctx.settings.promotion_file)
        tag = tag or (record.tag if record else None)
        if tag is None:
            return self.cold_start()
        client = self._client()
        if client.health() is None:
            raise ServiceUnavailableError(
                f"the labelloop service at {client.url} is not reachable, so the pool was not re-scored: "
                "start it (`labelloop up`, or `bentoml serve serving.service:Labelloop`) or set "
                "LABELLOOP_SERVICE_URL, then run `labelloop rescore`")
        if not client.wait_for_version(tag, timeout_s=120):
            raise ServiceUnavailableError(
                f"the service at {client.url} did not switch to {tag} within 120 s "
                f"(it serves {client.serving_version()}): check its log, then run `labelloop rescore`")
        started = time.perf_counter()
        project = ctx.project_id()
        tasks, eval_tasks = self._unlabeled_tasks(project)
        done = 0

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress("re-scoring pool", done, len(tasks))

        batch_mode = isinstance(self.strategy, BatchQueryStrategy)
        preds = client.classify_files([ws.image_path(name) for _, name in tasks], on_batch=on_batch,
                                      with_embeddings=batch_mode)
        scores = [p.score for p in preds]
        if batch_mode and preds:
            scores = self.batch_mode_scores(client, preds)
        if ctx.settings.query_class_balance and preds:
            scores = self.class_balanced_scores(preds, scores)
        scored_s = time.perf_counter() - started
        stale = {p.model_version for p in preds} - {tag}
        if stale:  # the service swapped again mid-way: the next promotion re-scores
            log.warning("pool scored partly by %s; skipping push", stale)
            return 0
        self._replace_positions(project, tag, tasks + eval_tasks)
        pushed = ctx.gateway.push_predictions(project, [
            TaskPrediction(task_id=task_id, label=p.label, score=score, model_version=p.model_version)
            for (task_id, _), p, score in zip(tasks, preds, scores, strict=True)
        ] + self._eval_positions(eval_tasks, scores, tag))
        self._align(project, tag)
        ctx.state.set_marks(rescored_version=tag, rescored_tasks=pushed)
        record_pool_predictions(ctx.state, tag, {name: p.label for (_, name), p in zip(tasks, preds, strict=True)})
        ctx.state.set_job_error("rescore", None)
        log.info("re-scored %d pool tasks with %s in %.1fs (scored in %.1fs, pushed and aligned in %.1fs)",
                 pushed, tag, time.perf_counter() - started, scored_s, time.perf_counter() - started - scored_s)
        return pushed

    @staticmethod
    def _cold_start_space(params: Params, pixels: np.ndarray) -> np.ndarray:
        """Where diversity is measured before any model exists: a pretrained backbone's
        features when params.yaml names one (content, not pixels), else the pixels."""
        try:
            features = pretrained_features(params, pixels)
        except LabelloopError as exc:  # e.g. imagenet weights offline: pixels still spread the queue
            log.warning("cold start on pixels: the backbone's features are not available (%s)", exc)
            features = None
        return features if features is not None else pixels.reshape(len(pixels), -1)

    def cold_start(self) -> int:
        """No model yet: queue the unlabeled pool in a diversity order (k-center greedy on
        the images' pixels) instead of task-id order. Positions only, no pre-labels."""
        ctx = self.ctx
        ws = ctx.require_workspace()
        project = ctx.project_id()
        tasks, eval_tasks = self._unlabeled_tasks(project)
        if not tasks and not eval_tasks:
            return 0
        started = time.perf_counter()
        params = ws.params()
        scores: list[float] = []
        if tasks:
            pixels = preprocess([decode_image(ws.image_path(name)) for _, name in tasks], params.data.input_spec)
            order = cold_start_order(self._cold_start_space(params, pixels), head=ctx.settings.cold_start_diverse)
            scores = [float(s) for s in order_to_scores(order)]
        self._replace_positions(project, COLD_START_VERSION, tasks + eval_tasks)
        pushed = ctx.gateway.push_predictions(project, [
            TaskPrediction(task_id=task_id, label=None, score=score, model_version=COLD_START_VERSION)
            for (task_id, _), score in zip(tasks, scores, strict=True)
        ] + self._eval_positions(eval_tasks, scores, COLD_START_VERSION))
        self._align(project, COLD_START_VERSION)
        log.info("cold start: %d pool tasks queued in a diversity order in %.1fs",
                 pushed, time.perf_counter() - started)
        return pushed

    def _replace_positions(self, project: int, version: str, tasks: list[tuple[int, str]]) -> None:
        """The version the queue follows, pushed again (`add`, the watched folder, another
        `labelloop rescore`, cold start after an import): these tasks' old predictions go
        first. Label Studio keeps every prediction it is sent and serves a task by its lowest
        score of the version, so old positions would outrank the new ones (and the table
        would grow by the pool at every sync)."""
        if version == self.ctx.state.marks().queue_version:
            self.ctx.gateway.delete_task_predictions(project, [task_id for task_id, _ in tasks])

    def _eval_positions(self, eval_tasks: list[tuple[int, str]], pool_scores: list[float],
                        version: str) -> list[TaskPrediction]:
        """Evaluation tasks in a seeded random order (so the labeled part stays a uniform
        sample), one in every `eval.every` tasks while the set is too small to judge, after
        the pool once it is large enough. Positions only: no pre-label to anchor the
        annotator on the labels that judge the model."""
        if not eval_tasks:
            return []
        ws = self.ctx.workspace
        params = ws.params()
        # A stable seeded key per image, not a shuffle of what is left: re-scoring must not
        # bunch the labeled part into one stretch of the sample (a shuffle of a shrinking
        # list with one seed keeps nearly the same order, so labels went in import order).
        shuffled = sorted(eval_tasks, key=lambda task: eval_order_key(task[1], params.evaluation.seed))
        ready = ws.label_splits().eval_ready
        scores = interleave_scores(pool_scores, len(shuffled), every=None if ready else params.evaluation.every)
        self.ctx.state.set_marks(eval_interleaved=not ready)
        return [TaskPrediction(task_id=task_id, label=None, score=score, model_version=version)
                for (task_id, _), score in zip(shuffled, scores, strict=True)]

    def settle_evaluation(self) -> int:
        """Once the evaluation set is large enough, its unlabeled tasks leave the interleave
        for the end of the queue at once, not at the next re-score (a rejected run re-scores
        nothing, and annotators would keep labeling evaluation tasks meanwhile)."""
        ctx = self.ctx
        marks = ctx.state.marks()
        if not (marks.eval_interleaved and marks.queue_version and ctx.workspace.exists()):
            return 0
        if not ctx.workspace.label_splits().eval_ready:
            return 0
        project = ctx.project_id()
        _, eval_tasks = self._unlabeled_tasks(project)
        self._replace_positions(project, marks.queue_version, eval_tasks)
        pushed = ctx.gateway.push_predictions(project, [
            TaskPrediction(task_id=task_id, label=None, score=END_SCORE, model_version=marks.queue_version)
            for task_id, _ in eval_tasks
        ])
        ctx.state.set_marks(eval_interleaved=False)
        log.info("the evaluation set is large enough: its %d remaining tasks moved to the end of the queue", pushed)
        return pushed

    def requeue_disagreements(self) -> list[int]:
        """Tasks whose annotators disagree with no majority (the images `majority` holds
        back), and open suspect labels (`loop.quality`), are served once more, first in the
        queue, to an annotator who has not labeled them, until `review_max_annotators` have
        (a suspect: until one more has). A suspect's task says why in its data
        (`REVIEW_FIELD`). Returns the tasks re-queued now."""
        ctx = self.ctx
        settings = ctx.settings
        if not (settings.review_disagreements or settings.quality_suspects) or not ctx.workspace.exists():
            return []
        ws = ctx.workspace
        events = ws.events()
        review = set(held_back(events, "majority")) if settings.review_disagreements else set()
        reasons: dict[str, str] = {}
        if settings.quality_suspects:
            suspects = read_suspects(ws.root / LABELS_DIR)
            states = suspect_states(events, suspects, ws.params().data.label_policy)
            reasons = {s.image: s.reason for s in suspects if states.get(s.image) == "open"}
            # A review the label policy settled (`latest`: the review's label stands) is no
            # disagreement to take further; under `majority` it is a tie (unresolved): it is.
            review -= {image for image, state in states.items() if state in ("confirmed", "relabeled")}
            review |= set(reasons)
        annotators: dict[int, set[str]] = {}
        images: dict[int, str] = {}
        for event in current_annotations(events).values():
            if event.image in review and event.task_id is not None:
                annotators.setdefault(event.task_id, set()).add(event.annotator or str(event.annotation_id))
                images[event.task_id] = event.image
        # Still waiting for the extra annotator; resolved ties (and ties that got it) leave.
        asked = {t: n for t, n in ctx.state.review_queue().items() if t in annotators and len(annotators[t]) < n}
        version = ctx.state.marks().queue_version
        due = {task_id: len(who) + 1 for task_id, who in annotators.items()
               if len(who) + 1 <= settings.review_max_annotators and asked.get(task_id, 0) < len(who) + 1}
        why = {t: (images[t], reasons[images[t]]) for t in due if images[t] in reasons}
        if why:
            self._say_why(ctx.project_id(), why)
        for task_id, wanted in sorted(due.items()):
            ctx.gateway.requeue_for_review(task_id, wanted)
            log.info("task %s: %s; re-queued for annotator %d", task_id,
                     "suspect label" if images[task_id] in reasons else "annotators disagree", wanted)
        if version and due:  # first in the queue Label Studio serves now; one import for all of
            # them (Label Studio recounts the whole project after every prediction import)
            self._push_review_positions(ctx.project_id(), sorted(due), version)
        asked.update(due)  # recorded after both: a crash re-asks (idempotent)
        ctx.state.set_review_queue(asked)
        return sorted(due)

    def _say_why(self, project: int, why: dict[int, tuple[str, str]]) -> None:
        """Each re-queued suspect's reason in its task's data (`REVIEW_FIELD`: a column of the
        Data Manager, and in the task's JSON). Label Studio replaces a task's data as a whole
        on update, so the rest is read first: the annotated tasks' rows, one listing."""
        for task in self.ctx.gateway.project_tasks(project, annotated=True):
            if task.id in why and task.data.get(REVIEW_FIELD) != why[task.id][1]:
                image, reason = why[task.id]
                self.ctx.gateway.set_task_name(task.id, {**task.data, REVIEW_FIELD: reason}, image)

    def class_balanced_scores(self, preds: list[ImagePrediction], scores: list[float]) -> list[float]:
        """The queue's order (lowest score first) re-arranged so that every batch of
        `query_batch_size` takes the predicted classes in turn, the class with the fewest
        training labels first; positions become the scores."""
        classes = self.ctx.workspace.classes()
        index = {c: i for i, c in enumerate(classes)}
        counts = np.bincount([index[label] for label in self.ctx.workspace.label_splits().train.values()
                              if label in index], minlength=len(classes))
        order = class_balanced_order(np.argsort(np.asarray(scores), kind="stable"),
                                     np.array([index.get(p.label, 0) for p in preds]),
                                     batch_size=self.ctx.settings.query_batch_size, labeled_counts=counts)
        return [float(s) for s in order_to_scores(order)]

    def _unlabeled_tasks(self, project: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """(task id, image) of every task the workspace holds no label for, by task id: the
        pool tasks a strategy may choose from, and the evaluation tasks it never sees.
        Our own task map: listing 10k tasks from Label Studio costs seconds per thousand."""
        ws = self.ctx.workspace
        task_images = self.ctx.state.tasks() or self.ctx.gateway.task_images(project)
        labeled = set(ws.annotations_by_task())
        evaluation = ws.eval_images()
        unlabeled = [
            (task_id, name) for task_id, name in sorted(task_images.items())
            if task_id not in labeled and ws.image_path(name).exists()
        ]
        return [t for t in unlabeled if t[1] not in evaluation], [t for t in unlabeled if t[1] in evaluation]

    def _align(self, project: int, version: str) -> None:
        """Tasks re-queued for review get the top score of this version; then the project
        follows this version's scores and the queue tab exists."""
        ctx = self.ctx
        self._push_review_positions(project, sorted(ctx.state.review_queue()), version)
        ctx.gateway.align_queue(project, version, skip_queue=ctx.settings.skip_queue)
        ctx.state.set_marks(queue_view=ctx.gateway.ensure_queue_view(project), queue_version=version)

    def _push_review_positions(self, project: int, task_ids: list[int], version: str) -> None:
        """Top of the queue of `version` for these tasks; positions only, no pre-label."""
        if task_ids:
            self.ctx.gateway.push_predictions(project, [
                TaskPrediction(task_id=t, label=None, score=REVIEW_SCORE, model_version=version) for t in task_ids
            ])

    def batch_mode_scores(self, client: PredictionClient, preds: list[ImagePrediction]) -> list[float]:
        """Batch mode over the whole pool: the next `query_batch_size` tasks are chosen
        together, in the model's embedding space, away from what is labeled."""
        ws = self.ctx.workspace
        assert isinstance(self.strategy, BatchQueryStrategy)
        labeled = [ws.image_path(name) for name in ws.label_splits().train]
        labeled_embeddings = np.array([p.embedding for p in client.classify_files(
            [path for path in labeled if path.exists()], with_embeddings=True)], dtype=np.float32)
        classes = list(preds[0].probabilities)
        order = self.strategy.order(
            np.array([[p.probabilities[c] for c in classes] for p in preds]),
            np.array([p.embedding for p in preds], dtype=np.float32),
            labeled_embeddings=labeled_embeddings if len(labeled_embeddings) else None,
            batch_size=self.ctx.settings.query_batch_size,
        )
        return [float(s) for s in order_to_scores(order)]
