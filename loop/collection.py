"""Collection: Label Studio annotations -> one label shard -> one git commit -> dvc push,
exactly once across crashes (the cursor is committed with the shard it describes). The
labels a batch brings are checked for likely errors before the commit (`loop.quality`):
suspects found are written into the same commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kernel.errors import LabelloopError
from labeling import Task
from labeling.gateway import NAME_FIELD
from loop.context import LoopContext
from loop.quality import SuspectCheck
from loop.state import utcnow
from loop.workspace import Cursor
from pipelines.labels import LabelEvent, Suspect
from serving import drain_events

__all__ = ["CollectResult", "Collection", "annotation_events"]

log = logging.getLogger(__name__)

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what the gateway's timestamps look like


@dataclass(frozen=True)
class CollectResult:
    events: int
    upserts: int
    deletes: int
    commit: str | None
    batch: int
    suspects: int = 0  # labels of this batch (or earlier ones not judged yet) found likely wrong


def annotation_events(
    tasks: Iterable[Task],
    known: dict[int, LabelEvent],
    known_by_task: dict[int, set[int]],
    classes: set[str],
    images: set[str] | None = None,
) -> list[LabelEvent]:
    """What changed in these tasks since the workspace last recorded them.

    New or updated annotation -> upsert; an annotation the workspace holds that the task
    no longer has, or that was cancelled (skipped) -> delete. Unchanged -> nothing, so
    collecting the same tasks twice adds nothing (exactly once).
    """
    events: list[LabelEvent] = []
    unnamed = 0
    for task in tasks:
        # A task showing no image of the pool (an adopted project's task whose image could not
        # be had, a task someone added by hand) gives no labels: a label needs its image.
        if not task.image_name or (images is not None and task.image_name not in images):
            unnamed += any(not ann.was_cancelled for ann in task.annotations)
            continue
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
    if unnamed:
        log.warning("%d annotated task(s) show no image of the pool (no %r in their data naming one, e.g. an "
                    "adopted project's task whose image could not be fetched, or a task added by hand): their "
                    "annotations are not collected", unnamed, NAME_FIELD)
    return events


def _earlier(timestamp: str | None, seconds: float) -> str | None:
    if not timestamp:
        return None
    # fromisoformat: also cursors written before timestamps were normalised ('...09Z').
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    return (moment - timedelta(seconds=seconds)).strftime(CURSOR_FORMAT)


class Collection:
    def __init__(self, ctx: LoopContext, *, on_training_requested: Callable[[str], None]):
        self.ctx = ctx
        self._on_training_requested = on_training_requested
        self._suspects = SuspectCheck(ctx)

    def collect(self, *, full: bool = False) -> CollectResult:
        """New/changed/deleted annotations -> one shard -> one commit -> dvc push.

        Label Studio commits concurrent saves in any order, so a task can appear with an
        `updated_at` older than one already seen. The query therefore reaches back
        `collect_overlap_s` before the cursor; what was already recorded is recognised by
        annotation id and version and not collected again. `full` re-reads every
        annotated task (catches deletions that did not touch a task's `updated_at`).
        """
        ctx, cp = self.ctx, self.ctx.checkpoint
        ws = ctx.require_workspace()
        cp("collect:begin")
        self.process_events()
        cp("collect:events-done")
        with ctx.workspace_lock:
            ws.discard_uncommitted_labels()
            cp("collect:discarded")
            ctx.push_if_needed()
            cursor = ws.cursor()
            cp("collect:cursor-read")
            full = full or self._full_collect_due()
            since = None if full else _earlier(cursor.updated_at, ctx.settings.collect_overlap_s)
            tasks = ctx.gateway.tasks_updated_since(ctx.project_id(), since)
            cp("collect:tasks-fetched")
            known, by_task = ws.known_annotations(), ws.annotations_by_task()
            # Tasks whose annotations were deleted (webhook) or, in a full pass, every task
            # the workspace holds labels for that Label Studio no longer lists as annotated.
            deleted = ctx.state.pending_deletions()
            recheck = {known[a].task_id for a in deleted if a in known}
            if full:
                recheck |= set(by_task)
            recheck -= {t.id for t in tasks}
            tasks += ctx.gateway.tasks_by_id(sorted(t for t in recheck if t is not None))
            cp("collect:rechecked")
            events = annotation_events(tasks, known, by_task, set(ws.classes()), set(ws.pool_index()))
            cp("collect:diffed")
            ctx.state.set_marks(last_collect=utcnow(), **({"last_full_collect": utcnow()} if full else {}))
            cp("collect:last-collect-saved")
            if not events:
                ctx.state.forget_deletions(deleted)
                return CollectResult(0, 0, 0, None, cursor.batch)
            newest = max([t.updated_at for t in tasks] + [cursor.updated_at or ""])
            new_cursor = Cursor(batch=cursor.batch + 1, updated_at=newest)
            suspects = self._check(events, new_cursor.batch)  # written into this commit
            commit = ws.commit_labels(events, new_cursor)
            ctx.state.set_marks(last_collect_commit=commit,
                                **({"quality_checked_batch": new_cursor.batch} if suspects is not None else {}))
            ctx.state.forget_deletions(deleted)
            cp("collect:deletions-forgotten")
            ctx.push_if_needed()
            cp("collect:pushed")
        cp("collect:end")
        upserts = sum(e.op == "upsert" for e in events)
        log.info("collected batch %d: %d upserts, %d deletes -> %s",
                 new_cursor.batch, upserts, len(events) - upserts, commit[:10])
        return CollectResult(len(events), upserts, len(events) - upserts, commit, new_cursor.batch,
                             suspects=len(suspects or []))

    def _check(self, events: list[LabelEvent], batch: int) -> list[Suspect] | None:
        """Suspect labels among the new ones (None: not judged now). A check that fails is
        logged and recorded for `status`, never a failed collect: the labels still go in,
        and are judged at the next collect."""
        try:
            found = self._suspects.check(self.ctx.workspace.events(), events, batch)
        except (LabelloopError, OSError, ValueError) as exc:
            log.warning("labels of batch %d not checked for suspects: %s", batch, exc)
            self.ctx.state.set_job_error("quality", f"labels of batch {batch} not checked for suspects: {exc}")
            return None
        if "quality" in self.ctx.state.job_errors():
            self.ctx.state.set_job_error("quality", None)
        return found

    def _full_collect_due(self) -> bool:
        last = self.ctx.state.marks().last_full_collect
        if not last:
            return True
        age = datetime.now(timezone.utc) - datetime.fromisoformat(last)
        return age.total_seconds() >= self.ctx.settings.collect_full_interval_s

    def process_events(self) -> bool:
        """Drain the service's webhook spool. Returns True when annotations changed (collect
        soon); START_TRAINING queues a training run."""
        annotations_changed = False

        def handle(event: dict) -> None:  # idempotent: a crash before the ack replays it
            nonlocal annotations_changed
            self.ctx.checkpoint("events:read")
            action = str(event.get("action", ""))
            if action == "START_TRAINING":
                self._on_training_requested("Label Studio START_TRAINING")
            elif action.startswith("ANNOTATION"):
                annotations_changed = True
                if action == "ANNOTATIONS_DELETED":
                    self.ctx.state.add_pending_deletions(
                        int(a["id"]) for a in event.get("annotations") or [] if "id" in a
                    )
            self.ctx.checkpoint("events:handled")

        drain_events(self.ctx.settings.events_dir, handle)
        return annotations_changed
