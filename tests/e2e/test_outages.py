"""Outages against a REAL Label Studio (behind a proxy the test can break), a real DVC remote
and a real git workspace: Label Studio answering 5xx or gone, the DVC remote unreachable, a
git lock left behind, a full disk. Each time the job fails cleanly, the scheduler stays up
and backs off, `status` shows the condition, and once the fault clears everything catches
up with nothing lost."""

from __future__ import annotations

import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from labeling import LabelStudioGateway, SimulatedAnnotator
from loop.core import Loop
from kernel.errors import LabelStudioError, WorkspaceError
from loop.scheduler import build_scheduler
from loop.stack import free_port
from loop.starter import digits_truth
from pipelines.labels import current_annotations
from tests.helpers.remote import labels_from_remote

pytestmark = pytest.mark.e2e


class BreakableProxy:
    """Forwards to Label Studio; `mode` "ok", "500" (answers 500), or stopped (refused)."""

    def __init__(self, target: str):
        self.target, self.port, self.mode = target.rstrip("/"), free_port(), "ok"
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "BreakableProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if proxy.mode == "500":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
                r = httpx.request(self.command, proxy.target + self.path, headers=headers, content=body, timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in {"content-length", "transfer-encoding", "content-encoding", "connection"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def wait_until(condition, timeout_s: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture
def setup(ls_settings, label_studio):
    proxy = BreakableProxy(label_studio.url).start()
    settings = ls_settings("outages", label_studio_url=proxy.url, collect_interval_s=1.0, retrain_interval_s=1e6,
                           job_backoff_max_s=4.0, collect_full_interval_s=10_000.0)
    loop = Loop(settings)
    loop.init(starter="digits")
    project = loop.connect()
    yield loop, proxy, project, SimulatedAnnotator(LabelStudioGateway(label_studio.url, settings.label_studio_token()))
    proxy.stop()


def test_outages_fail_cleanly_and_catch_up(setup, tmp_path):
    loop, proxy, project, annotators = setup  # annotators reach Label Studio directly
    ws = loop.workspace
    truth = digits_truth()
    pool = iter(sorted(loop.state.tasks().items()))

    def annotate(n: int) -> None:
        for _ in range(n):
            task_id, image = next(pool)
            annotators.annotate(task_id, truth[image])

    # 1. Label Studio answers 5xx: the scheduler's collect fails, backs off, stays up,
    #    status says why; when Label Studio recovers the labels arrive.
    scheduler = build_scheduler(loop)
    scheduler.start()
    try:
        wait_until(lambda: loop.state.marks().last_collect, what="a first collect")
        proxy.mode = "500"
        head = ws.head()
        wait_until(lambda: "collect" in loop.status().errors, what="the collect error in status")
        assert "500" in loop.status().errors["collect"] and scheduler.running
        assert ws.head() == head and ws.git("status", "--porcelain") == ""  # nothing half-done
        nxt = loop.status().next_jobs["collect"]
        assert nxt is not None  # the schedule is visible, pushed back by the backoff
        annotate(3)  # annotators keep working while the loop cannot reach Label Studio
        proxy.mode = "ok"
        wait_until(lambda: len(ws.known_annotations()) == 3 and not loop.status().errors, what="catching up")
    finally:
        scheduler.shutdown(wait=True)

    # 2. Label Studio gone (connection refused): a clean LabelStudioError, then catch-up.
    proxy.stop()
    head = ws.head()
    annotate(2)
    with pytest.raises(LabelStudioError, match="unreachable"):
        loop.collect()
    assert ws.head() == head
    proxy.start()
    assert loop.collect().upserts == 2

    # 3. The DVC remote unreachable: the commit is made, the push fails, status shows the
    #    unpushed commit; once the remote is back the next collect pushes it.
    remote = loop.settings.remote_url
    shutil.move(remote, f"{remote}.away")
    open(remote, "w").close()  # a file where the remote directory should be
    annotate(2)
    with pytest.raises(WorkspaceError, match="dvc push"):
        loop.collect()
    assert loop.status().unpushed_commit == ws.head()
    os.remove(remote)
    shutil.move(f"{remote}.away", remote)
    loop.collect()
    assert loop.status().unpushed_commit is None

    # 4. A git lock left behind by a killed git: a fresh one is refused cleanly (someone may
    #    be working), an old one is removed and the collect goes on.
    lock = ws.root / ".git" / "index.lock"
    lock.touch()
    annotate(1)
    with pytest.raises(WorkspaceError, match="another git process"):
        loop.collect()
    old = time.time() - 120
    os.utime(lock, (old, old))
    assert loop.collect().upserts == 1 and not lock.exists()

    # 5. A full disk while writing the shard: the collect fails, nothing is half-committed,
    #    and the next collect (space freed) writes everything.
    full = Loop(loop.settings.model_copy(update={"fault_kill_at": "commit:shard-written=enospc"}))
    annotate(2)
    with pytest.raises(OSError, match="No space left"):
        full.collect()
    assert loop.collect().upserts == 2
    assert ws.git("status", "--porcelain") == ""

    # Nothing lost, nothing twice: the pushed labels equal Label Studio's annotations.
    in_label_studio = {a.id: (t.image_name, a.label) for t in annotators.all_tasks(project)
                       for a in t.annotations if not a.was_cancelled}
    assert len(in_label_studio) == 10
    events = labels_from_remote(ws.root, tmp_path)
    pushed = {e.annotation_id: (e.image, e.label) for e in current_annotations(events).values()
              if e.annotation_id is not None}
    assert pushed == in_label_studio
    upserts = [e.annotation_id for e in events if e.annotation_id is not None and e.op == "upsert"]
    assert len(upserts) == len(set(upserts)) == 10
