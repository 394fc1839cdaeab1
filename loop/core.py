"""`Loop`: the one object that owns the work. CLI commands and scheduler jobs call it.

collect   Label Studio annotations -> label shard -> one git commit -> dvc push
train     data commit -> launcher (dvc repro) -> evaluation gate -> promotion record
rescore   promoted model -> predictions for the unlabeled pool -> Label Studio queue order
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock

from labeling import LabelStudioGateway, Task, TaskPrediction
from loop.errors import ConfigError, LabelStudioError, WorkspaceError
from loop.faults import FaultPoints
from loop.launcher import Launcher, TrainingRequest, make_launcher
from loop.settings import Settings
from loop.starter import digits_images, folder_images
from loop.state import RunRecord, StateStore, utcnow
from loop.workspace import Cursor, Workspace
from pipelines.images import decode_image, preprocess
from pipelines.labels import LabelEvent, current_annotations, held_back, labels_by_image
from pipelines.layout import IMAGES_DIR
from pipelines.strategies import cold_start_order, order_to_scores, pool_order
from serving import WEBHOOK_SECRET_HEADER, PredictionClient, PromotionRecord, drain_events, read_promotion, write_promotion

__all__ = ["Loop", "CollectResult", "LoopStatus", "annotation_events"]

log = logging.getLogger(__name__)

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what the gateway's timestamps look like
#: The queue's model version before any model exists (the cold-start diversity order).
COLD_START_VERSION = "cold-start"
#: Label Studio keeps only scores in [0, 1] (it drops others silently); queue positions
#: are > 0 (`order_to_scores`), so a task re-queued for review at 0 goes first.
REVIEW_SCORE = 0.0
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class CollectResult:
    events: int
    upserts: int
    deletes: int
    commit: str | None
    batch: int


@dataclass(frozen=True)
class LoopStatus:
    workspace: str
    data_commit: str
    label_batch: int
    labels: int
    labels_pending_training: int
    serving: PromotionRecord | None
    service_version: str | None
    runs: list[RunRecord]
    last_collect: str | None
    last_collect_commit: str | None = None
    unpushed_commit: str | None = None  # a data commit not yet in the DVC remote (an outage)
    training_in_progress: str | None = None  # the lease holder
    training_requested: bool = False
    pending_deletions: int = 0
    held_back_for_review: list[str] = field(default_factory=list)  # annotators disagree (majority tie)
    requeued_for_review: list[int] = field(default_factory=list)  # task ids back in the queue
    queue_version: str | None = None  # the model version Label Studio's queue follows
    next_jobs: dict[str, str | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def annotation_events(
    tasks: Iterable[Task],
    known: dict[int, LabelEvent],
    known_by_task: dict[int, set[int]],
    classes: set[str],
) -> list[LabelEvent]:
    """What changed in these tasks since the workspace last recorded them.

    New or updated annotation -> upsert; an annotation the workspace holds that the task
    no longer has, or that was cancelled (skipped) -> delete. Unchanged -> nothing, so
    collecting the same tasks twice adds nothing (exactly once).
    """
    events: list[LabelEvent] = []
    for task in tasks:
        present: set[int] = set()
        for ann in task.annotations:
            usable = not ann.was_cancelled and ann.label is not None
            if usable and ann.label not in classes:
                log.warning("task %s annotation %s: label %r is not a class; ignored",
                            task.id, ann.id, ann.label)
                usable = False
            if not usable:
                continue
            present.add(ann.id)
            held = known.get(ann.id)
            if held is None or held.annotation_updated_at != ann.updated_at or held.label != ann.label:
                events.append(LabelEvent(
                    image=task.image_name, label=ann.label, op="upsert", task_id=task.id,
                    annotation_id=ann.id, annotation_updated_at=ann.updated_at,
                    annotator=ann.completed_by,
                ))
        for gone in sorted(known_by_task.get(task.id, set()) - present):
            held = known[gone]
            events.append(LabelEvent(
                image=held.image, label=held.label, op="delete", task_id=task.id,
                annotation_id=gone, annotation_updated_at=task.updated_at, annotator=held.annotator,
            ))
    return events


def _earlier(timestamp: str | None, seconds: float) -> str | None:
    if not timestamp:
        return None
    # fromisoformat: also cursors written before timestamps were normalised ('...09Z').
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    return (moment - timedelta(seconds=seconds)).strftime(CURSOR_FORMAT)


#: One training at a time, across processes and restarts: a lease in the state DB that
#: its holder renews while training; a crashed holder's lease runs out after LEASE_TTL_S.
TRAINING_LEASE = "training"
LEASE_TTL_S = 60.0


class _Heartbeat:
    """Calls `renew` every `interval_s` in a daemon thread until stopped."""

    def __init__(self, renew: Callable[[], object], interval_s: float):
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(interval_s):
                try:
                    renew()
                except Exception:  # a missed beat is retried; the TTL covers two more
                    log.exception("could not renew the training lease")

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class Loop:
    def __init__(
        self,
        settings: Settings,
        *,
        gateway: LabelStudioGateway | None = None,
        launcher: Launcher | None = None,
    ):
        self.settings = settings
        self.checkpoint = FaultPoints(settings.fault_kill_at)
        self.workspace = Workspace(settings.workspace, checkpoint=self.checkpoint)
        self.state = StateStore(settings.state_db)
        self.launcher = launcher or make_launcher(settings)
        self._gateway = gateway
        self._training = threading.Lock()
        self._deletions_lock = threading.Lock()
        self._ws_lock = FileLock(str(settings.home / "workspace.lock"))
        #: This Loop's identity as a lease holder (host, process, instance).
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # --- collaborators ---------------------------------------------------------------
    @property
    def gateway(self) -> LabelStudioGateway:
        if self._gateway is None:
            token = self.settings.label_studio_token()
            if token is None:
                raise ConfigError("set LABELLOOP_LABEL_STUDIO_API_KEY to talk to Label Studio")
            self._gateway = LabelStudioGateway(self.settings.label_studio_url, token)
        return self._gateway

    def _require_workspace(self) -> Workspace:
        if not self.workspace.exists():
            raise WorkspaceError(
                f"no workspace at {self.workspace.root}: run `labelloop init {self.workspace.root}`"
            )
        return self.workspace

    def project_id(self) -> int:
        cached = self.state.get("project_id")
        if cached:
            return int(cached)
        project = self.gateway.ensure_project(self.settings.project_title, self.workspace.classes())
        self.state.put("project_id", str(project))
        return project

    # --- init and connect --------------------------------------------------------------
    def init(
        self, *, starter: str | None = "digits", folder: Path | None = None,
        seed_per_class: int = 2, test_fraction: float = 0.25,
    ) -> Workspace:
        if folder is not None:
            images = folder_images(folder)
        elif starter == "digits":
            images = digits_images()
        else:
            raise ConfigError("choose a dataset: --starter digits or --from-folder PATH")
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace.create(
            self.settings.workspace, images=images, remote_url=self.settings.remote_url,
            seed_per_class=seed_per_class, test_fraction=test_fraction,
        )
        return self.workspace

    def connect(self) -> int:
        """Project (created from the classes), local-file storage, pool tasks, ML backend."""
        ws = self._require_workspace()
        project = self.gateway.ensure_project(self.settings.project_title, ws.classes())
        self.state.put("project_id", str(project))
        images_dir = ws.root / IMAGES_DIR
        try:
            relative = images_dir.relative_to(self.settings.files_root)
        except ValueError:
            raise ConfigError(
                f"{images_dir} is not under Label Studio's document root {self.settings.files_root}; "
                "set LABELLOOP_LABEL_STUDIO_FILES_ROOT to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
            ) from None
        self.gateway.ensure_local_storage(project, images_dir)
        tasks = self.gateway.import_images(project, ws.pool_images(), f"/data/local-files/?d={relative}/")
        self.state.set_tasks(tasks)
        log.info("project %s: %d pool tasks", project, len(tasks))
        if read_promotion(self.settings.promotion_file) is None and not self.state.get("queue_version"):
            self.cold_start()
        if PredictionClient.for_settings(self.settings).health() is not None:
            s = self.settings
            password = s.serving_basic_auth_password
            self.gateway.connect_ml_backend(
                project, s.resolved_service_url, "labelloop",
                basic_auth=(s.serving_basic_auth_user, password.get_secret_value())
                if s.serving_basic_auth_user and password else None,
                webhook_headers={WEBHOOK_SECRET_HEADER: s.webhook_secret.get_secret_value()}
                if s.webhook_secret else None,
            )
        return project

    # --- collect -------------------------------------------------------------------------
    def collect(self, *, full: bool = False) -> CollectResult:
        """New/changed/deleted annotations -> one shard -> one commit -> dvc push; then
        disagreements go back to the queue for review (see `requeue_disagreements`)."""
        result = self._collect(full=full)
        self.requeue_disagreements()
        return result

    def _collect(self, *, full: bool) -> CollectResult:
        """New/changed/deleted annotations -> one shard -> one commit -> dvc push.

        Label Studio commits concurrent saves in any order, so a task can appear with an
        `updated_at` older than one already seen. The query therefore reaches back
        `collect_overlap_s` before the cursor; what was already recorded is recognised by
        annotation id and version and not collected again. `full` re-reads every
        annotated task (catches deletions that did not touch a task's `updated_at`).
        """
        ws = self._require_workspace()
        cp = self.checkpoint
        cp("collect:begin")
        self.process_events()
        cp("collect:events-done")
        with self._ws_lock:
            ws.discard_uncommitted_labels()
            cp("collect:discarded")
            self._push_if_needed()
            cursor = ws.cursor()
            cp("collect:cursor-read")
            full = full or self._full_collect_due()
            since = None if full else _earlier(cursor.updated_at, self.settings.collect_overlap_s)
            tasks = self.gateway.tasks_updated_since(self.project_id(), since)
            cp("collect:tasks-fetched")
            known, by_task = ws.known_annotations(), ws.annotations_by_task()
            # Tasks whose annotations were deleted (webhook) or, in a full pass, every task
            # the workspace holds labels for that Label Studio no longer lists as annotated.
            deleted = self._deleted_annotation_ids()
            recheck = {known[a].task_id for a in deleted if a in known}
            if full:
                recheck |= set(by_task)
            recheck -= {t.id for t in tasks}
            tasks += self.gateway.tasks_by_id(sorted(t for t in recheck if t is not None))
            cp("collect:rechecked")
            events = annotation_events(tasks, known, by_task, set(ws.classes()))
            cp("collect:diffed")
            self.state.put("last_collect", utcnow())
            if full:
                self.state.put("last_full_collect", utcnow())
            cp("collect:last-collect-saved")
            if not events:
                self._forget_deletions(deleted)
                return CollectResult(0, 0, 0, None, cursor.batch)
            newest = max([t.updated_at for t in tasks] + [cursor.updated_at or ""])
            new_cursor = Cursor(batch=cursor.batch + 1, updated_at=newest)
            commit = ws.commit_labels(events, new_cursor)
            self.state.put("last_collect_commit", commit)
            self._forget_deletions(deleted)
            cp("collect:deletions-forgotten")
            self._push_if_needed()
            cp("collect:pushed")
        cp("collect:end")
        upserts = sum(e.op == "upsert" for e in events)
        log.info("collected batch %d: %d upserts, %d deletes -> %s",
                 new_cursor.batch, upserts, len(events) - upserts, commit[:10])
        return CollectResult(len(events), upserts, len(events) - upserts, commit, new_cursor.batch)

    def _deleted_annotation_ids(self) -> set[int]:
        return set(json.loads(self.state.get("deleted_annotations") or "[]"))

    def _note_deletions(self, ids: set[int]) -> None:
        with self._deletions_lock:  # the events job and collect run in different threads
            pending = self._deleted_annotation_ids() | ids
            self.state.put("deleted_annotations", json.dumps(sorted(pending)))

    def _forget_deletions(self, handled: set[int]) -> None:
        """Only what this collect handled: a deletion that arrived meanwhile stays pending."""
        with self._deletions_lock:
            pending = self._deleted_annotation_ids() - handled
            self.state.put("deleted_annotations", json.dumps(sorted(pending)))

    def _full_collect_due(self) -> bool:
        last = self.state.get("last_full_collect")
        if not last:
            return True
        age = datetime.now(timezone.utc) - datetime.fromisoformat(last)
        return age.total_seconds() >= self.settings.collect_full_interval_s

    def _push_if_needed(self) -> None:
        head = self.workspace.head()
        if self.state.get("pushed_commit") == head:
            return
        self.checkpoint("push:begin")
        self.workspace.push()
        self.checkpoint("push:pushed")
        self.state.put("pushed_commit", head)
        self.checkpoint("push:recorded")

    # --- train and promote -------------------------------------------------------------
    def labels_pending_training(self) -> int:
        """Label events collected after the data of the last finished run (failed ones too:
        a failed run is retried when new labels arrive or on request, not in a hot loop)."""
        last = self.state.last_finished_run()
        return self.workspace.labels_in_batches_after(last.label_batch if last else 0)

    def request_training(self, reason: str = "requested") -> None:
        """Queue a training run (START_TRAINING, a schedule, a person): the retrain job starts it."""
        self.state.put("training_requested", "1")
        log.info("training requested (%s)", reason)

    def training_requested(self) -> bool:
        return self.state.get("training_requested") == "1"

    def retrain_if_due(self) -> RunRecord | None:
        """The retrain policy: enough new labels since the last run, or a request."""
        self._require_workspace()
        pending = self.labels_pending_training()
        requested = self.training_requested()
        never_trained = read_promotion(self.settings.promotion_file) is None and not self.state.runs(1)
        if pending >= self.settings.retrain_min_new_labels or requested or never_trained:
            trigger = "requested" if requested else "first model" if never_trained else f"{pending} new labels"
            return self.train(trigger=trigger)
        return None

    def train(
        self, *, trigger: str = "manual", rescore: bool = True, progress: Progress | None = None,
    ) -> RunRecord | None:
        """One training run; promote if not worse than the serving model, then re-score
        the pool (unless `rescore` is False). None if a run is already in progress."""
        ws = self._require_workspace()
        if not self._training.acquire(blocking=False):
            log.info("a training run is already in progress")
            return None
        holder = self.state.acquire_lease(TRAINING_LEASE, self._owner, LEASE_TTL_S)
        if holder is not None:
            self._training.release()
            log.info("a training run is already in progress (lease held by %s)", holder)
            return None
        heartbeat = _Heartbeat(lambda: self.state.acquire_lease(TRAINING_LEASE, self._owner, LEASE_TTL_S),
                               LEASE_TTL_S / 3)
        try:
            self.state.put("training_requested", "0")
            interrupted = [r for r in self.state.runs(100) if r.status == "running"]
            if interrupted and getattr(self.launcher, "resumable", False):
                # We hold the lease, so nobody runs these: a scheduler died while its Job
                # kept going. Same run id: the launcher adopts the Job instead of a new one.
                run = interrupted[0]
                run_id, commit = run.run_id, run.data_commit
                for other in interrupted[1:]:
                    self.state.finish_run(other.run_id, "failed", "interrupted (scheduler stopped)")
                log.info("resuming interrupted run %s", run_id)
            else:
                self.state.fail_interrupted_runs()
                with self._ws_lock:
                    self._push_if_needed()
                    commit, batch = ws.head(), ws.cursor().batch
                run_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{commit[:7]}-{secrets.token_hex(2)}"
                self.state.start_run(run_id, commit, batch, trigger)
            result = self.launcher.run(TrainingRequest(run_id, str(ws.root), commit))
            if not result.succeeded:
                self.state.finish_run(run_id, "failed", result.error or "unknown error")
                log.error("training run %s failed: %s", run_id, result.error)
                return self.state.run(run_id)
            serving = read_promotion(self.settings.promotion_file)
            if serving is not None and result.accuracy < serving.accuracy:
                reason = f"accuracy {result.accuracy:.4f} < serving {serving.accuracy:.4f}"
                self.state.finish_run(run_id, "rejected", reason, model_tag=result.model_tag,
                                      accuracy=result.accuracy, n_labels=result.n_labels)
                log.info("run %s rejected: %s", run_id, reason)
                return self.state.run(run_id)
            write_promotion(self.settings.promotion_file, PromotionRecord(
                tag=result.model_tag, accuracy=result.accuracy, data_commit=commit,
                n_labels=result.n_labels, run_id=run_id,
            ))
            reason = "first model" if serving is None else f"accuracy {result.accuracy:.4f} >= {serving.accuracy:.4f}"
            self.state.finish_run(run_id, "promoted", reason, model_tag=result.model_tag,
                                  accuracy=result.accuracy, n_labels=result.n_labels)
            log.info("run %s promoted %s (%s)", run_id, result.model_tag, reason)
        finally:
            heartbeat.stop()
            self.state.release_lease(TRAINING_LEASE, self._owner)
            self._training.release()
        if not rescore:
            return self.state.run(run_id)
        try:
            self.rescore(result.model_tag, progress=progress)
        except (LabelStudioError, ConfigError) as exc:
            log.warning("promoted, but the pool was not re-scored: %s", exc)
            self.state.put("error:rescore", str(exc))
        return self.state.run(run_id)

    # --- re-score the pool ---------------------------------------------------------------
    def rescore(self, tag: str | None = None, *, progress: Progress | None = None) -> int:
        """Predictions of the serving model for every unlabeled task, pushed in bulk;
        then the queue serves the lowest score (most informative) first."""
        ws = self._require_workspace()
        record = read_promotion(self.settings.promotion_file)
        tag = tag or (record.tag if record else None)
        if tag is None:
            return self.cold_start()
        client = PredictionClient.for_settings(self.settings)
        if client.health() is None:
            log.warning("service %s is not running; pool not re-scored", client.url)
            return 0
        if not client.wait_for_version(tag, timeout_s=120):
            log.warning("service did not switch to %s in time; pool not re-scored", tag)
            return 0
        started = time.perf_counter()
        project = self.project_id()
        tasks = self._unlabeled_tasks(project)
        done = 0

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress("re-scoring pool", done, len(tasks))

        batch_mode = self.settings.query_strategy == "diverse_margin"
        preds = client.classify_files([ws.image_path(name) for _, name in tasks], on_batch=on_batch,
                                      with_embeddings=batch_mode)
        scores = [p.score for p in preds]
        if batch_mode and preds:
            scores = self.batch_mode_scores(client, preds)
        scored_s = time.perf_counter() - started
        stale = {p.model_version for p in preds} - {tag}
        if stale:  # the service swapped again mid-way: the next promotion re-scores
            log.warning("pool scored partly by %s; skipping push", stale)
            return 0
        pushed = self.gateway.push_predictions(project, [
            TaskPrediction(task_id=task_id, label=p.label, score=score, model_version=p.model_version)
            for (task_id, _), p, score in zip(tasks, preds, scores, strict=True)
        ])
        self._align_queue(project, tag)
        self.state.put("rescored", f"{tag} {pushed}")
        log.info("re-scored %d pool tasks with %s in %.1fs (scored in %.1fs, pushed and aligned in %.1fs)",
                 pushed, tag, time.perf_counter() - started, scored_s, time.perf_counter() - started - scored_s)
        return pushed

    def _unlabeled_tasks(self, project: int) -> list[tuple[int, str]]:
        """(task id, image) of every pool task the workspace holds no label for, by task id.
        Our own task map: listing 10k tasks from Label Studio costs seconds per thousand."""
        ws = self.workspace
        task_images = self.state.tasks() or self.gateway.task_images(project)
        labeled = set(ws.annotations_by_task())
        return [
            (task_id, name) for task_id, name in sorted(task_images.items())
            if task_id not in labeled and ws.image_path(name).exists()
        ]

    def _align_queue(self, project: int, version: str) -> None:
        """Tasks re-queued for review get the top score of this version; then the project
        follows this version's scores and the queue tab exists."""
        self._push_review_positions(project, sorted(self._review_queue()), version)
        self.gateway.align_queue(project, version, skip_queue=self.settings.skip_queue)
        self.state.put("queue_view", str(self.gateway.ensure_queue_view(project)))
        self.state.put("queue_version", version)

    def cold_start(self) -> int:
        """No model yet: queue the unlabeled pool in a diversity order (k-center greedy on
        the images' pixels) instead of task-id order. Positions only, no pre-labels."""
        ws = self._require_workspace()
        project = self.project_id()
        tasks = self._unlabeled_tasks(project)
        if not tasks:
            return 0
        started = time.perf_counter()
        size = ws.params().data.image_size
        pixels = preprocess([decode_image(ws.image_path(name)) for _, name in tasks], size)
        order = cold_start_order(pixels.reshape(len(tasks), -1), head=self.settings.cold_start_diverse)
        pushed = self.gateway.push_predictions(project, [
            TaskPrediction(task_id=task_id, label=None, score=float(score), model_version=COLD_START_VERSION)
            for (task_id, _), score in zip(tasks, order_to_scores(order), strict=True)
        ])
        self._align_queue(project, COLD_START_VERSION)
        log.info("cold start: %d pool tasks queued in a diversity order in %.1fs",
                 pushed, time.perf_counter() - started)
        return pushed

    # --- disagreements go back to the queue -----------------------------------------------
    def _review_queue(self) -> dict[int, int]:
        """Task id -> the number of annotators Label Studio was asked to serve it to."""
        return {int(k): int(v) for k, v in json.loads(self.state.get("review_queue") or "{}").items()}

    def _push_review_positions(self, project: int, task_ids: list[int], version: str) -> None:
        """Top of the queue of `version` for these tasks; positions only, no pre-label."""
        if task_ids:
            self.gateway.push_predictions(project, [
                TaskPrediction(task_id=t, label=None, score=REVIEW_SCORE, model_version=version) for t in task_ids
            ])

    def requeue_disagreements(self) -> list[int]:
        """Tasks whose annotators disagree with no majority (the images `majority` holds
        back) are served once more, first in the queue, to an annotator who has not labeled
        them, until `review_max_annotators` have. Returns the tasks re-queued now."""
        if not self.settings.review_disagreements or not self.workspace.exists():
            return []
        events = self.workspace.events()
        tied = set(held_back(events, "majority"))
        annotators: dict[int, set[str]] = {}
        for event in current_annotations(events).values():
            if event.image in tied and event.task_id is not None:
                annotators.setdefault(event.task_id, set()).add(event.annotator or str(event.annotation_id))
        # Still waiting for the extra annotator; resolved ties (and ties that got it) leave.
        asked = {t: n for t, n in self._review_queue().items() if t in annotators and len(annotators[t]) < n}
        version = self.state.get("queue_version")
        requeued = []
        for task_id, who in sorted(annotators.items()):
            wanted = len(who) + 1
            if wanted > self.settings.review_max_annotators or asked.get(task_id, 0) >= wanted:
                continue
            self.gateway.requeue_for_review(task_id, wanted)
            if version:  # first in the queue Label Studio serves now
                self._push_review_positions(self.project_id(), [task_id], version)
            asked[task_id] = wanted  # recorded after both: a crash re-asks (idempotent)
            self.state.put("review_queue", json.dumps(asked))
            requeued.append(task_id)
            log.info("task %s: annotators disagree; re-queued for annotator %d", task_id, wanted)
        self.state.put("review_queue", json.dumps(asked))
        return requeued

    def batch_mode_scores(self, client: PredictionClient, preds: list) -> list[float]:
        """Batch mode over the whole pool: the next `query_batch_size` tasks are uncertain
        AND far from each other and from what is labeled (in the model's embedding space)."""
        ws = self.workspace
        labeled = [ws.image_path(name) for name in labels_by_image(ws.events(), ws.params().data.label_policy)]
        labeled_embeddings = np.array([p.embedding for p in client.classify_files(
            [path for path in labeled if path.exists()], with_embeddings=True)], dtype=np.float32)
        classes = list(preds[0].probabilities)
        order = pool_order(
            "diverse_margin",
            np.array([[p.probabilities[c] for c in classes] for p in preds]),
            embeddings=np.array([p.embedding for p in preds], dtype=np.float32),
            labeled_embeddings=labeled_embeddings if len(labeled_embeddings) else None,
            batch_size=self.settings.query_batch_size,
        )
        return [float(s) for s in order_to_scores(order)]

    # --- events from the service's webhook -------------------------------------------------
    def process_events(self) -> bool:
        """Drain webhook events. Returns True when annotations changed (collect soon)."""
        annotations_changed = False

        def handle(event: dict) -> None:  # idempotent: a crash before the ack replays it
            nonlocal annotations_changed
            self.checkpoint("events:read")
            action = str(event.get("action", ""))
            if action == "START_TRAINING":
                self.request_training("Label Studio START_TRAINING")
            elif action.startswith("ANNOTATION"):
                annotations_changed = True
                if action == "ANNOTATIONS_DELETED":
                    self._note_deletions(
                        {int(a["id"]) for a in event.get("annotations") or [] if "id" in a}
                    )
            self.checkpoint("events:handled")

        drain_events(self.settings.events_dir, handle)
        return annotations_changed

    # --- status ----------------------------------------------------------------------
    def status(self) -> LoopStatus:
        ws = self._require_workspace()
        events, policy = ws.events(), ws.params().data.label_policy
        labels = len(labels_by_image(events, policy))
        errors = {}
        for name in ("collect", "retrain", "rescore", "events", "cron"):
            value = self.state.get(f"error:{name}")
            if value:
                errors[name] = value
        head = ws.head()
        lease = self.state.lease_holder(TRAINING_LEASE)
        return LoopStatus(
            workspace=str(ws.root),
            data_commit=head,
            label_batch=ws.cursor().batch,
            labels=labels,
            labels_pending_training=self.labels_pending_training(),
            serving=read_promotion(self.settings.promotion_file),
            service_version=PredictionClient.for_settings(self.settings).serving_version(),
            runs=self.state.runs(10),
            last_collect=self.state.get("last_collect"),
            last_collect_commit=self.state.get("last_collect_commit"),
            unpushed_commit=None if self.state.get("pushed_commit") == head else head,
            training_in_progress=lease[0] if lease else None,
            training_requested=self.training_requested(),
            pending_deletions=len(self._deleted_annotation_ids()),
            held_back_for_review=held_back(events, policy),
            requeued_for_review=sorted(self._review_queue()),
            queue_version=self.state.get("queue_version"),
            next_jobs=json.loads(self.state.get("schedule") or "{}"),
            errors=errors,
        )
