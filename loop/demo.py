"""`labelloop demo`: the whole loop from scratch, end to end, with a simulated annotator.

The digits are written out as image files; a stratified quarter is kept aside as the
hidden ground truth (never imported: the held-out set no real project has) and the rest
becomes a workspace with NO labels. Label Studio and the service start, the project opens
with the cold-start queue (a diversity order, evaluation tasks interleaved), and an
annotator takes tasks in the order Label Studio's queue hands them out, answering from
the digits' ground truth: evaluation tasks and pool tasks alike, as they come. The
scheduler collects, commits, trains the first model once every class has enough
training labels, retrains, promotes and re-scores on its own; the demo only watches and
reports what the labels bought: accuracy on the annotator-labeled evaluation set beside
accuracy on the hidden split.
"""

from __future__ import annotations

import math
import random
import shutil
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kernel.errors import LabelloopError
from kernel.settings import Settings
from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.dashboard import write_snapshot
from loop.scheduler import build_scheduler
from loop.stack import LabelStudioServer, ServiceServer, free_port
from loop.starter import StarterImage, digits_images
from loop.state import RunRecord
from pipelines.params import EvalParams
from serving import PredictionClient

__all__ = ["RoundRow", "run_demo", "demo_settings", "split_hidden"]

DIGIT_CLASSES = [str(d) for d in range(10)]
#: Share of the digits kept aside as the hidden ground truth (stratified by class).
HIDDEN_FRACTION = 0.25
#: Tasks labeled at a time while the first model still misses training labels for a class.
TOP_UP = 10
#: One evaluation task in every 2 until the set is ready (the default is 1 in 5): a uniform
#: sample needs ~50 labels before every class has 2, and the demo's few rounds should see
#: the evaluation set take over judging from cross-validation.
DEMO_EVALUATION = EvalParams(every=2)


@dataclass(frozen=True)
class RoundRow:
    round: int
    train_labels: int  # cumulative labels the model trains on
    eval_labels: int  # cumulative labels on the evaluation sample (never trained on)
    judged_by: str  # "cv (48)", "eval (30)": what judged the run, on how many labels
    accuracy: float | None  # the run's accuracy, as judged
    eval_accuracy: float | None  # the serving model on the annotator-labeled evaluation set
    hidden_accuracy: float | None  # the serving model on the hidden ground-truth split
    serving_version: str
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


def split_hidden(images: Sequence[StarterImage], fraction: float = HIDDEN_FRACTION,
                 seed: int = 0) -> tuple[list[StarterImage], list[StarterImage]]:
    """(to label, hidden): a seeded, per-class `fraction` kept aside as ground truth."""
    by_class: dict[str, list[StarterImage]] = defaultdict(list)
    for image in images:
        by_class[image.label].append(image)
    rng = random.Random(seed)
    keep: list[StarterImage] = []
    hidden: list[StarterImage] = []
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        n_hidden = round(len(members) * fraction)
        hidden += members[:n_hidden]
        keep += members[n_hidden:]
    key = lambda image: image.name  # noqa: E731
    return sorted(keep, key=key), sorted(hidden, key=key)


def _write(images: Sequence[StarterImage], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for image in images:
        path = folder / image.name
        path.write_bytes(image.png)
        paths.append(path)
    return paths


def _accuracy(client: PredictionClient, paths: Sequence[Path], labels: Sequence[str]) -> float | None:
    """The serving model's accuracy on these images, through the service (the product's path)."""
    if not paths:
        return None
    predictions = client.classify_files(list(paths))
    return sum(p.label == y for p, y in zip(predictions, labels, strict=True)) / len(paths)


def _wait_for_run(loop: Loop, min_labels: int, timeout_s: float,
                  idle: Callable[[], None] | None = None) -> RunRecord:
    """The first finished run trained on at least `min_labels` training labels, once a
    promoted one's predictions are in Label Studio's queue. `idle` is called while no run
    is due (the cold start may still miss labels for a class)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = loop.state.runs(5)
        # Suspect labels (loop.quality) are held out of training until reviewed: once the
        # collect has committed every label given, the run to wait for trains on the rest.
        splits = loop.workspace.label_splits()
        if len(splits.train) + len(splits.held_suspects) >= min_labels:
            min_labels = min(min_labels, len(splits.train))
        for run in runs:
            if run.status != "running" and (run.n_labels or 0) >= min_labels:
                rescored = loop.state.marks().rescored_version == run.model_tag
                if run.status != "promoted" or rescored:
                    return run
            if run.status == "failed" and run.finished_at:
                raise LabelloopError(f"training run {run.run_id} failed: {run.reason}")
        if idle is not None and not runs:
            idle()
        time.sleep(1.0)
    raise LabelloopError(f"no training run covered {min_labels} training labels within {timeout_s:.0f}s")


def run_demo(
    settings: Settings, *, rounds: int = 5, per_round: int = 30, first_round: int = 50,
    console: Console | None = None,
) -> list[RoundRow]:
    """`rounds` loop turns: the annotator labels `first_round` tasks (the cold start),
    then `per_round` per turn; each turn ends when the loop has trained on them."""
    console = console or Console()
    ls_data = settings.home / "label-studio"
    base = settings.home / "demo"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    settings = demo_settings(settings, base, per_round=per_round)
    started = time.perf_counter()
    rows: list[RoundRow] = []
    last_run_id: str | None = None
    say = lambda msg: console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/] {msg}")  # noqa: E731

    ls = LabelStudioServer(settings, ls_data)
    service: ServiceServer | None = None
    client: PredictionClient | None = None
    scheduler = None
    try:
        # Label Studio starts while the workspace is built and the service loads: they overlap.
        say(f"starting Label Studio at {ls.url} (a first start migrates its database: ~1 min)")
        ls.start(wait=False)
        settings = Settings.load(**{**settings.model_dump(), "label_studio_api_key": ls.token})
        loop = Loop(settings)
        digits = digits_images()
        to_label, hidden = split_hidden(digits)
        _write(to_label, base / "images")
        hidden_paths = _write(hidden, base / "hidden")
        hidden_truth = [image.label for image in hidden]
        say(f"{len(digits)} digits written as images: {len(to_label)} to label, {len(hidden)} kept aside "
            f"as the hidden ground truth (never imported, never shown to the annotator)")
        report = loop.init_from_images(base / "images", DIGIT_CLASSES, evaluation=DEMO_EVALUATION, model="small_cnn")
        ws = loop.workspace
        index = ws.pool_index()
        eval_names = ws.eval_images()
        say(f"workspace {ws.root}: {report.summary}; no labels; {len(eval_names)} images reserved "
            f"for the evaluation set")
        source_truth = {image.name: image.label for image in to_label}
        truth = {name: source_truth[Path(p.source).name] for name, p in index.items()}
        service = ServiceServer(settings)  # with the Label Studio token in its settings
        say(f"starting the service at {service.url}; it loads whatever gets promoted")
        service.start(wait=False)
        ls.wait_ready()
        service.wait_ready()
        client = PredictionClient.for_settings(settings.serving)
        annotator = SimulatedAnnotator(loop.gateway)
        if annotator.delete_project(settings.project_title):
            say("removed the previous demo's Label Studio project")
        project = loop.connect()
        say(f"Label Studio project {project}: {len(index)} tasks, cold-start queue (a diversity order, "
            f"one evaluation task in every {ws.params().evaluation.every}), service connected as ML backend")

        spent = {"train": 0, "eval": 0}

        def label(n: int) -> int:
            done = annotator.label_next(project, truth, n)
            for name in done:
                spent["eval" if name in eval_names else "train"] += 1
            return len(done)

        def top_up() -> None:
            # No run yet: once the scheduler has collected every label, the first model may
            # still miss training labels for a class. Label on until it has them.
            if len(ws.label_splits().train) < spent["train"]:
                return  # not collected yet
            missing = loop.status().missing_for_first_model
            if missing:
                say(f"the first model still needs {'; '.join(missing)}: labeling {TOP_UP} more")
                label(TOP_UP)

        scheduler = None
        for round_no in range(1, rounds + 1):
            round_start = time.perf_counter()
            n = label(first_round if round_no == 1 else per_round)
            say(f"round {round_no}: annotator labeled {n} tasks in queue order "
                f"({spent['train']} training, {spent['eval']} evaluation labels so far); waiting for the loop")
            if scheduler is None:
                # Started after the first round, so that the first model trains on all of it.
                scheduler = build_scheduler(loop)
                scheduler.start()
            run = _wait_for_run(loop, spent["train"], timeout_s=600, idle=top_up if round_no == 1 else None)
            last_run_id = run.run_id
            serving = loop.status().serving
            tag = serving.tag if serving else ""
            if tag:
                client.wait_for_version(tag, timeout_s=60)
            evaluation = ws.label_splits().evaluation
            if not tag:
                eval_acc = hidden_acc = None
            else:
                judged_here = run.judged_by == "eval" and run.status == "promoted" and run.n_judged == len(evaluation)
                eval_acc = run.accuracy if judged_here else _accuracy(
                    client, [ws.image_path(name) for name in evaluation], list(evaluation.values()))
                hidden_acc = _accuracy(client, hidden_paths, hidden_truth)
            rows.append(RoundRow(
                round_no, spent["train"], spent["eval"],
                f"{run.judged_by or '-'} ({run.n_judged})" if run.n_judged is not None else (run.judged_by or "-"),
                run.accuracy, eval_acc, hidden_acc, tag, run.status, time.perf_counter() - round_start,
            ))
            progress = loop.status().evaluation
            judging = ("it judges the runs" if progress.ready else "still missing " + ", ".join(progress.missing)
                       ) if progress else ""
            say(f"round {round_no}: run {run.run_id} {run.status}: accuracy {_fmt(run.accuracy)} by "
                f"{rows[-1].judged_by}; serving model on the hidden split {_fmt(hidden_acc)}; "
                f"evaluation set: {progress.labels if progress else 0} labels, {judging}")
        # Full model versions: not cut to a pipe's default 80 columns.
        Console(width=max(console.width, 150), file=console.file).print(_table(rows))
        _explain(console, rows, DEMO_EVALUATION.every)
        console.print(f"Label Studio: {ls.url}  (login {settings.label_studio_username})")
        console.print(f"Service:      {service.url}  (Swagger UI at /, OpenAPI at /docs.json)")
        console.print(f"Workspace:    {settings.workspace}  (git log; dvc metrics show)")
        last = settings.runs_dir / last_run_id / "report" / "report.md" if last_run_id else None
        if last is not None and last.exists():
            console.print(f"Last run:     {last}  (what its model changed: `labelloop report {last_run_id}`)")
        # The demo stops its servers: the page is kept as a file, taken while they still answer.
        page = write_snapshot(loop)
        live = (f"`make up` serves the live page at http://{settings.service_host}:{settings.dashboard_port}"
                if settings.dashboard_port else "no live page: LABELLOOP_DASHBOARD_PORT=0")
        console.print(f"Dashboard:    {page}  (a snapshot; {live})")
        say("done; stopping everything the demo started")
        return rows
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        if client is not None:
            client.close()
        if service is not None:
            service.stop()
        ls.stop()


def _fmt(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _table(rows: list[RoundRow]) -> Table:
    table = Table(title="labelloop demo from scratch: one row per loop turn")
    table.add_column("round", justify="right")
    table.add_column("labels:\ntraining", justify="right")
    table.add_column("labels:\nevaluation", justify="right")
    table.add_column("judged by\n(labels)")
    table.add_column("run\naccuracy", justify="right")
    table.add_column("serving on\nevaluation set", justify="right")
    table.add_column("serving on\nhidden truth", justify="right")
    table.add_column("serving model version", no_wrap=True)
    table.add_column("outcome")
    table.add_column("seconds", justify="right")
    for r in rows:
        table.add_row(
            str(r.round), str(r.train_labels), str(r.eval_labels), r.judged_by, _fmt(r.accuracy),
            _fmt(r.eval_accuracy), _fmt(r.hidden_accuracy), r.serving_version.split(":")[-1], r.outcome,
            f"{r.seconds:.0f}",
        )
    return table


def _explain(console: Console, rows: list[RoundRow], every: int) -> None:
    if not rows:
        return
    last = rows[-1]
    total = last.train_labels + last.eval_labels
    share = last.eval_labels / total if total else 0.0
    console.print(
        f"[bold]The annotator gave {total} labels: {last.train_labels} trained the model, {last.eval_labels} "
        f"({share:.0%}) went to the evaluation set.[/] Evaluation labels are the real cost of knowing how good "
        "the model is: never trained on, they are the only honest measure a project without a labeled test "
        f"set has (the queue hands out one in every {every} until the set can judge, then none).")
    precision = ""
    if last.eval_accuracy is not None and last.eval_labels:
        p = last.eval_accuracy
        margin = 2 * math.sqrt(max(p * (1 - p), 0.25 / last.eval_labels) / last.eval_labels)
        precision = (f" On {last.eval_labels} labels it measures to about ±{margin:.0%} (two standard errors): "
                     "'serving on evaluation set' follows 'serving on hidden truth' only that closely.")
    console.print(
        "judged by: cross-validation on the training labels (cv) until the evaluation set is large enough, "
        "then the evaluation set (eval). Cross-validation runs on the labels the queue chose, the hard cases, "
        "so it judges low. The evaluation set is honest but small; the hidden truth is what a real project "
        f"never has.{precision} More evaluation labels buy a finer gate.")
