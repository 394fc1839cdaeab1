"""Exactly once, whatever the crash: the collecting process is SIGKILLed at every crash
point of collect -> write -> git commit -> dvc push -> cursor save (21 points, `loop.faults`),
restarted each time, while annotators keep creating, relabeling and deleting in a REAL
Label Studio. Afterwards the labels in the PUSHED DVC data equal Label Studio's
annotations: zero lost, zero duplicated."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.faults import COLLECT_POINTS
from loop.starter import digits_truth
from pipelines.labels import current_annotations
from serving import spool_event
from tests.helpers.remote import labels_from_remote

pytestmark = pytest.mark.e2e


def collect_process(settings, *, kill_at: str = "") -> subprocess.CompletedProcess:
    """`labelloop collect` as its own process, as the scheduler's collect job runs it."""
    env = settings.child_env()
    env["LABELLOOP_FAULT_KILL_AT"] = kill_at
    cli = Path(sys.executable).parent / "labelloop"
    return subprocess.run([str(cli), "collect"], env=env, capture_output=True, text=True, timeout=300)


def assert_workspace_matches(loop, gateway, project, point: str) -> None:
    """The workspace's labels equal Label Studio's annotations; no version recorded twice."""
    in_label_studio = {a.id: (t.image_name, a.label) for t in gateway.tasks_updated_since(project, None)
                       for a in t.annotations if not a.was_cancelled}
    events = loop.workspace.events()
    current = {e.annotation_id: (e.image, e.label) for e in current_annotations(events).values()
               if e.annotation_id is not None}
    assert current == in_label_studio, point
    versions = Counter((e.annotation_id, e.annotation_updated_at) for e in events
                       if e.annotation_id is not None and e.op == "upsert")
    assert max(versions.values(), default=1) == 1, (point, versions.most_common(3))


def test_sigkill_at_every_collect_point_loses_and_duplicates_nothing(ls_settings, tmp_path):
    settings = ls_settings("exactly-once")
    loop = Loop(settings)
    loop.init(starter="digits")
    project = loop.connect()
    gateway, annotator = loop.gateway, SimulatedAnnotator(loop.gateway)
    truth = digits_truth()
    tasks = sorted(loop.state.tasks().items())  # (task id, image) of the pool
    annotations: list[int] = []
    cursor = 0
    assert len(COLLECT_POINTS) >= 20

    for step, point in enumerate(COLLECT_POINTS):
        # What annotators do meanwhile: two new labels, every third step a relabel, every
        # fourth a deletion (Label Studio's webhook event spooled as the service does).
        for _ in range(2):
            task_id, image = tasks[cursor]
            cursor += 1
            annotations.append(annotator.annotate(task_id, truth[image]))
        if step % 3 == 2:
            annotator.update_annotation(annotations[step], "0" if truth[tasks[step][1]] != "0" else "1")
        if step % 4 == 3:
            victim = annotations.pop(1)
            annotator.delete_annotation(victim)
            spool_event(settings.events_dir, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": victim}]})
        spool_event(settings.events_dir, {"action": "ANNOTATION_CREATED", "annotation": {"id": annotations[-1]}})

        killed = collect_process(settings, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-1500:])
        if step % 2:
            continue  # every other crash is followed by another crash before a clean run
        # Restarted: it catches up, and the workspace holds each annotation version once.
        restarted = collect_process(settings)
        assert restarted.returncode == 0, (point, restarted.stderr[-2000:])
        assert_workspace_matches(loop, gateway, project, point)

    # A last restart; a second run finds nothing new.
    first = collect_process(settings)
    assert first.returncode == 0, first.stderr[-2000:]
    again = collect_process(settings)
    assert again.returncode == 0 and "nothing new" in again.stdout.lower(), again.stdout

    in_label_studio = {
        a.id: (t.image_name, a.label, a.updated_at)
        for t in gateway.tasks_updated_since(project, None) for a in t.annotations if not a.was_cancelled
    }
    assert set(in_label_studio) == set(annotations)
    events = labels_from_remote(loop.workspace.root, tmp_path)
    current = {e.annotation_id: (e.image, e.label) for e in current_annotations(events).values()
               if e.annotation_id is not None}
    assert current == {a: (image, label) for a, (image, label, _) in in_label_studio.items()}  # zero lost
    versions = Counter((e.annotation_id, e.annotation_updated_at) for e in events
                       if e.annotation_id is not None and e.op == "upsert")
    assert max(versions.values()) == 1  # zero duplicated: each annotation version committed once
    pushed_versions = {(a, v) for a, v in versions}
    for annotation_id, (_, _, updated_at) in in_label_studio.items():
        assert (annotation_id, updated_at) in pushed_versions
    # The workspace is clean and everything is pushed.
    assert loop.workspace.git("status", "--porcelain") == ""
    assert loop.state.marks().pushed_commit == loop.workspace.head()
