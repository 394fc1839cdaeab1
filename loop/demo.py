"""`labelloop demo`: the whole loop, end to end, with a simulated annotator.

Starts Label Studio and the service, trains model v1 on the seed labels, connects the
service as ML backend, then an annotator takes tasks in the order Label Studio's queue
hands them out and answers from the digits ground truth. The scheduler collects,
commits, retrains and promotes on its own; the demo only watches and reports.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from labeling import SimulatedAnnotator
from loop.core import Loop
from kernel.errors import LabelloopError
from loop.scheduler import build_scheduler
from kernel.settings import Settings
from loop.stack import LabelStudioServer, ServiceServer, free_port
from loop.starter import digits_truth
from loop.state import RunRecord

__all__ = ["RoundRow", "run_demo", "demo_settings"]


@dataclass(frozen=True)
class RoundRow:
    round: int
    labels: int
    accuracy: float | None
    serving_version: str
    data_commit: str
    outcome: str
    seconds: float


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def demo_settings(settings: Settings, base: Path, *, per_round: int) -> Settings:
    """A fresh home + workspace under `base`; fast scheduler intervals. Label Studio's
    data stays in <home>/label-studio between demos (a restart takes seconds, a first
    start ~45 s); each demo replaces its project."""
    ls_port = 8080 if _port_free("127.0.0.1", 8080) else free_port()
    svc_port = settings.service_port if _port_free("127.0.0.1", settings.service_port) else free_port()
    return Settings.load(**{
        **settings.model_dump(),
        "home": base / "home",
        "workspace": base / "workspace",
        "dvc_remote": "",
        "label_studio_url": f"http://127.0.0.1:{ls_port}",
        "label_studio_files_root": base,
        "service_port": svc_port,
        "service_url": "",
        # Label Studio's data dir is shared with `up`: the demo keeps to its own project.
        "project_title": f"{settings.project_title} demo",
        # Annotation webhooks pull collects forward; the interval is only the safety net.
        "collect_interval_s": 15.0,
        "retrain_interval_s": 2.0,
        "retrain_min_new_labels": per_round,
    })


def _wait_for_run(loop: Loop, min_labels: int, timeout_s: float) -> RunRecord:
    """The run that covers `min_labels`, once its predictions are in Label Studio's queue."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for run in loop.state.runs(5):
            if run.status != "running" and (run.n_labels or 0) >= min_labels:
                rescored = loop.state.marks().rescored_version == run.model_tag
                if run.status != "promoted" or rescored:
                    return run
            if run.status == "failed" and run.finished_at:
                raise LabelloopError(f"training run {run.run_id} failed: {run.reason}")
        time.sleep(1.0)
    raise LabelloopError(f"no training run covered {min_labels} labels within {timeout_s:.0f}s")


def run_demo(
    settings: Settings, *, rounds: int = 3, per_round: int = 30, console: Console | None = None,
) -> list[RoundRow]:
    console = console or Console()
    ls_data = settings.home / "label-studio"
    base = settings.home / "demo"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    settings = demo_settings(settings, base, per_round=per_round)
    started = time.perf_counter()
    rows: list[RoundRow] = []
    say = lambda msg: console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/] {msg}")  # noqa: E731

    ls = LabelStudioServer(settings, ls_data)
    service: ServiceServer | None = None
    scheduler = None
    try:
        # Label Studio starts while the workspace is built and v1 trains: they overlap.
        say(f"starting Label Studio at {ls.url} (a first start migrates its database: ~1 min)")
        ls.start(wait=False)
        settings = Settings.load(**{**settings.model_dump(), "label_studio_api_key": ls.token})
        loop = Loop(settings)
        say("creating the workspace from scikit-learn's digits")
        ws = loop.init(starter="digits")
        say(f"workspace {ws.root}: {len(ws.events())} seed labels, {len(ws.pool_images())} pool images")
        service = ServiceServer(settings)  # with the Label Studio token in its settings
        say(f"starting the service at {service.url}; it loads whatever gets promoted")
        service.start(wait=False)
        say("training model v1 on the seed labels (dvc repro in a training job)")
        first = loop.train(trigger="initial", rescore=False)  # the project comes next
        if first is None or first.status != "promoted":
            raise LabelloopError(f"initial training failed: {first.reason if first else 'busy'}")
        rows.append(RoundRow(0, first.n_labels or 0, first.accuracy, first.model_tag or "",
                             first.data_commit[:10], first.status, time.perf_counter() - started))
        say(f"v1 = {first.model_tag}: held-out accuracy {first.accuracy:.4f}")
        ls.wait_ready()
        service.wait_ready()
        annotator = SimulatedAnnotator(loop.gateway)
        if annotator.delete_project(settings.project_title):
            say("removed the previous demo's Label Studio project")
        project = loop.connect()
        say(f"Label Studio project {project}: pool imported, service connected as ML backend")
        pushed = loop.rescore()
        say(f"pool scored: {pushed} predictions pushed, queue ordered by {settings.query_strategy}")
        scheduler = build_scheduler(loop)
        scheduler.start()
        truth = digits_truth()
        labels = first.n_labels or 0
        for round_no in range(1, rounds + 1):
            round_start = time.perf_counter()
            done = annotator.label_next(project, truth, per_round)
            labels += len(done)
            say(f"round {round_no}: annotator labeled {len(done)} tasks in queue order; waiting for the loop")
            run = _wait_for_run(loop, labels, timeout_s=600)
            serving = loop.status().serving
            rows.append(RoundRow(
                round_no, run.n_labels or 0, run.accuracy, serving.tag if serving else "",
                run.data_commit[:10], run.status,
                time.perf_counter() - round_start,
            ))
            say(f"round {round_no}: run {run.run_id} {run.status}: accuracy {run.accuracy:.4f}")
        # Full model versions: not cut to a pipe's default 80 columns.
        Console(width=max(console.width, 120), file=console.file).print(_table(rows))
        console.print(f"Label Studio: {ls.url}  (login {settings.label_studio_username})")
        console.print(f"Service:      {service.url}  (Swagger UI at /, OpenAPI at /docs.json)")
        console.print(f"Workspace:    {settings.workspace}  (git log; dvc metrics show)")
        say("done; stopping everything the demo started")
        return rows
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        if service is not None:
            service.stop()
        ls.stop()


def _table(rows: list[RoundRow]) -> Table:
    table = Table(title="labelloop demo: one row per loop turn")
    for column in ("round", "labels", "held-out accuracy", "serving model version", "data commit", "outcome", "seconds"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.round), str(r.labels), f"{r.accuracy:.4f}" if r.accuracy is not None else "-",
            r.serving_version.split(":")[-1], r.data_commit, r.outcome, f"{r.seconds:.0f}",
        )
    return table
