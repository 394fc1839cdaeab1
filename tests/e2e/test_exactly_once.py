"""Exactly once, whatever the crash: the collecting process is SIGKILLed at every crash
point of collect -> write -> git commit -> dvc push -> cursor save (21 points, `loop.faults`),
restarted each time, while annotators keep creating, relabeling and deleting in a REAL
Label Studio WHILE the collect runs. Afterwards the labels in the PUSHED DVC data equal
Label Studio's annotations: zero lost, zero duplicated. Run with the default 300 s
look-back and with 2 s, so the cursor logic itself (not the overlap) is exercised; in the
2 s run, deletions reach the loop only through Label Studio's own webhook calls."""

from __future__ import annotations

import http.server
import json
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from contextlib import contextmanager
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


class WebhookSpool:
    """Label Studio's OWN webhook calls, received on loopback and spooled exactly as the
    service's `/webhook` spools them: the deletions then reach the loop only that way."""

    def __init__(self, events_dir: Path):
        spool = self

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if str(payload.get("action", "")).startswith("ANNOTATION"):
                    spool_event(events_dir, payload)
                    spool.received[payload["action"]] += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.received: Counter = Counter()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Annotators:
    """Annotators at work: new labels, relabels, deletions, one action at a time from a
    seeded random stream. `spool`: the test spools the webhook events as the service does;
    else Label Studio's own webhook brings them (`WebhookSpool`)."""

    def __init__(self, annotator: SimulatedAnnotator, tasks: list[tuple[int, str]], events_dir, seed: int,
                 *, spool: bool = True):
        self.annotator, self.tasks, self.events_dir, self.spool = annotator, tasks, events_dir, spool
        self.truth = digits_truth()
        self.rng = random.Random(seed)
        self.annotations: list[int] = []
        self.image_of: dict[int, str] = {}
        self.next_task = 0
        self.actions = Counter()

    def act(self) -> None:
        roll = self.rng.random()
        if len(self.annotations) > 4 and roll < 0.15:
            victim = self.annotations.pop(self.rng.randrange(len(self.annotations)))
            self.annotator.delete_annotation(victim)
            if self.spool:
                spool_event(self.events_dir, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": victim}]})
            self.actions["delete"] += 1
        elif len(self.annotations) > 4 and roll < 0.35:
            target = self.rng.choice(self.annotations)
            right = self.truth[self.image_of[target]]
            self.annotator.update_annotation(target, "0" if right != "0" else "1")
            self.actions["relabel"] += 1
        else:
            task_id, image = self.tasks[self.next_task]
            self.next_task += 1
            annotation = self.annotator.annotate(task_id, self.truth[image])
            self.annotations.append(annotation)
            self.image_of[annotation] = image
            if self.spool:
                spool_event(self.events_dir, {"action": "ANNOTATION_CREATED", "annotation": {"id": annotation}})
            self.actions["create"] += 1

    @contextmanager
    def working(self, at_most: int = 12):
        """Acting in the background, WHILE the body (a collect) runs; at least one action."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(at_most):
                    self.act()
                    if stop.wait(0.15):
                        return
            except BaseException as exc:  # surfaced in the test thread below
                errors.append(exc)

        thread = threading.Thread(target=work, name="annotators")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(60)
        assert not errors, errors


@pytest.mark.parametrize("overlap_s", [300.0, 2.0], ids=["lookback-300s-spooled", "lookback-2s-ls-webhook"])
def test_sigkill_at_every_collect_point_loses_and_duplicates_nothing(ls_settings, tmp_path, overlap_s):
    """With a 2 s look-back the deletions come only through Label Studio's own webhook."""
    settings = ls_settings(f"exactly-once-{overlap_s:.0f}", collect_overlap_s=overlap_s)
    loop = Loop(settings)
    loop.init(starter="digits")
    project = loop.connect()
    gateway = loop.gateway
    webhook = None
    if overlap_s < 60:
        webhook = WebhookSpool(settings.events_dir)
        gateway._client.webhooks.create(project=project, url=webhook.url, send_payload=True,
                                        send_for_all_actions=True)
    people = Annotators(SimulatedAnnotator(gateway), sorted(loop.state.tasks().items()), settings.events_dir,
                        seed=int(overlap_s), spool=webhook is None)
    assert len(COLLECT_POINTS) >= 20

    for step, point in enumerate(COLLECT_POINTS):
        with people.working():  # annotators create, relabel and delete while it collects
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
    assert set(in_label_studio) == set(people.annotations)
    assert min(people.actions.values()) > 0 and len(people.actions) == 3, people.actions
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
    if webhook is not None:  # every deletion came through Label Studio's webhook, none from the test
        assert webhook.received["ANNOTATIONS_DELETED"] == people.actions["delete"] > 0, webhook.received
        webhook.close()
