"""The `labelloop` command: thin adapters over `Loop` (each parses, calls one method,
returns an exit code). Errors are translated once, in `main()`:

exit code  meaning
0          done
1          another labelloop error
2          usage error (click's message) or a setting is missing/invalid
3          the workspace (git + DVC) is missing or cannot be written
4          Label Studio is unreachable or refused a call
5          no promoted model yet
6          a training run failed (the serving model is unchanged)
7          bad input (not an image, ...)
8          the labelloop service is not reachable
9          another training run is in progress
10         an operating-system error (disk full, permissions, a missing file)
130        interrupted (Ctrl-C)
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, TaskID
from rich.table import Table

from kernel.errors import LabelloopError, TrainingError
from kernel.settings import Settings
from loop.core import Loop
from loop.creation import ModelKind
from loop.imports import ImportReport
from loop.ingest import classes_from_label_config, parse_classes
from loop.s3images import is_s3_url

if TYPE_CHECKING:
    from loop.dashboard import DashboardServer
    from loop.stack import StackLock

#: An OSError that reached the CLI (disk full, permissions, a file that vanished).
OS_ERROR_EXIT = 10

app = typer.Typer(help="labelloop: an active-learning labeling loop.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()


def _settings(**overrides) -> Settings:
    return Settings.load(**{k: v for k, v in overrides.items() if v is not None})


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"labelloop {version('labelloop')}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for noisy in ("httpx", "dvc", "apscheduler.executors.default", "filelock", "botocore", "aiobotocore", "s3fs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is max_instances=1 working.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


@app.command()
def init(
    directory: Annotated[Optional[Path], typer.Argument(help="Workspace directory (default: settings)")] = None,
    images: Annotated[Optional[str], typer.Option(
        help="A folder, or s3://bucket/prefix, of images, unlabeled or not (nested; PNG, JPEG, WebP, BMP, "
             "TIFF, GIF)")] = None,
    classes: Annotated[Optional[str], typer.Option(help='With --images: the class names, "cat,dog,bird"')] = None,
    label_config: Annotated[Optional[Path], typer.Option(
        help="With --images: take the classes from a Label Studio config (one Image, one Choices tag)")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="With --images: a CSV image,label of labels you have")] = None,
    labels_from_folders: Annotated[bool, typer.Option(
        help="With --images: images in a <class>/ folder are labeled with that class")] = False,
    from_project: Annotated[Optional[int], typer.Option(
        help="Adopt this Label Studio project (its id): its images become the pool, its annotations the "
             "first labels, its config the classes")] = None,
    model: Annotated[str, typer.Option(
        help="With --images/--from-project: auto (from the images: photos get a pretrained backbone, small "
             "or grey images the small CNN), small_cnn or backbone")] = "auto",
    weights: Annotated[Optional[str], typer.Option(
        help="A backbone's starting weights: imagenet (downloaded by Keras), none, or a weights file's path "
             "or URL")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        help="Model input size, pixels per side (default: 8 for small_cnn, 96 for backbone)")] = None,
    starter: Annotated[str, typer.Option(help="Starter dataset (labeled, with a test split)")] = "digits",
    from_folder: Annotated[Optional[Path], typer.Option(
        help="Labeled <class>/ folders: a held-out test split and seed labels are cut from them")] = None,
    seed_per_class: int = 2,
    test_fraction: float = 0.25,
) -> None:
    """Create the data workspace: git + DVC + remote, params.yaml, dvc.yaml, the images."""
    settings = _settings(workspace=directory)
    if from_project is not None:
        if images is not None or classes or label_config or labels or labels_from_folders:
            raise typer.BadParameter("--from-project takes the images and classes from the project: "
                                     "leave out --images, --classes, --label-config and --labels")
        with _progress() as progress:
            adopted = Loop(settings).init_from_project(from_project, image_size=image_size,
                                                       model=_model_kind(model), weights=weights,
                                                       progress=progress)
        _print_import(adopted.imports)  # the tasks not adopted are its skipped items, with the reason
        console.print(f"{adopted.summary}. Workspace {settings.workspace}; remote {settings.remote_url}. "
                      "Next: `labelloop up`: the existing annotations are collected as the first labels")
        return
    if images is None:
        if classes or label_config or labels or labels_from_folders:
            raise typer.BadParameter("--classes, --label-config, --labels and --labels-from-folders go with --images")
        ws = Loop(settings).init(starter=starter, folder=from_folder, seed_per_class=seed_per_class,
                                 test_fraction=test_fraction)
        console.print(f"workspace {ws.root}: {len(ws.events())} seed labels, "
                      f"{len(ws.pool_images())} pool images, remote {settings.remote_url}")
        return
    if (classes is None) == (label_config is None):
        raise typer.BadParameter('name the classes: --classes "cat,dog,bird" or --label-config FILE')
    names = parse_classes(classes) if classes is not None else classes_from_label_config(_read(label_config))
    with _progress() as progress:
        report = Loop(settings).init_from_images(
            _image_source(images), names, labels_csv=labels, labels_from_folders=labels_from_folders,
            image_size=image_size, model=_model_kind(model), weights=weights, progress=progress)
    _print_import(report)
    console.print(f"workspace {settings.workspace}: classes {', '.join(names)}; remote {settings.remote_url}. "
                  "Next: `labelloop up` (or `labelloop connect`) to start labeling")


@app.command()
def add(
    path: Annotated[str, typer.Argument(help="A folder (or one file), or s3://bucket/prefix, of new images")],
    labels: Annotated[Optional[Path], typer.Option(help="A CSV image,label of labels you have")] = None,
    labels_from_folders: Annotated[bool, typer.Option(
        help="Images in a <class>/ folder are labeled with that class")] = False,
) -> None:
    """Add new images to the pool: one data commit, Label Studio tasks, scored into the queue."""
    with _progress() as progress:
        report = Loop(_settings()).add(_image_source(path), labels_csv=labels, labels_from_folders=labels_from_folders,
                                       progress=progress)
    _print_import(report)
    if report.commit and report.tasks_imported:
        console.print(f"{report.tasks_imported} new Label Studio tasks; {report.queued} tasks queued")


def _model_kind(text: str) -> ModelKind:
    if text not in ("auto", "small_cnn", "backbone"):
        raise typer.BadParameter(f"--model {text!r}: auto, small_cnn or backbone")
    return text  # type: ignore[return-value]


def _image_source(text: str) -> Path | str:
    """An s3:// URL as is (a Path would fold its '//'), anything else a local path."""
    return text if is_s3_url(text) else Path(text).expanduser()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc


def _print_import(report: ImportReport) -> None:
    for skipped in report.skipped[:20]:
        console.print(f"[yellow]skipped {skipped.source}: {skipped.reason}[/]")
    if len(report.skipped) > 20:
        console.print(f"[yellow]... and {len(report.skipped) - 20} more skipped files[/]")
    if report.commit:
        console.print(f"{report.batch}: {report.summary} -> {report.commit[:10]} (pushed)")
    else:
        console.print(f"nothing new: {report.summary}")
    if report.model:
        console.print(f"model: {report.model}")


@app.command()
def connect() -> None:
    """Create/find the Label Studio project, import the pool, connect the service."""
    project = Loop(_settings()).connect()
    console.print(f"Label Studio project {project} ready")


@app.command()
def collect(
    full: Annotated[bool, typer.Option(help="Re-read every annotated task, not only recent ones")] = False,
) -> None:
    """Collect new/changed/deleted annotations into one DVC commit (and push)."""
    result = Loop(_settings()).collect(full=full)
    if result.commit:
        console.print(f"batch {result.batch}: {result.upserts} upserts, {result.deletes} deletes "
                      f"-> {result.commit[:10]} (pushed)")
    else:
        console.print("nothing new to collect")


@contextmanager
def _progress():
    """A rich progress bar fed by Loop's (what, done, total) callbacks."""
    with Progress(console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield update


@app.command()
def train() -> None:
    """Train now on the workspace HEAD; promote if not worse than the serving model."""
    with console.status("training (clone at the data commit, dvc repro, evaluate, register) ..."):
        settings = _settings()
        loop = Loop(settings)
        run = loop.train(trigger="cli", rescore=False)
    console.print(f"run {run.run_id}: {run.status} ({run.reason}) {run.model_tag or ''}")
    if run.status == "failed":
        raise TrainingError(f"training run {run.run_id} failed: {run.reason}; the serving model is "
                            f"unchanged (log: {settings.runs_dir / run.run_id / 'job.log'})")
    if run.status == "promoted":
        with _progress() as progress:
            loop.rescore(run.model_tag, progress=progress)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="The training run (`labelloop status` lists them)")],
) -> None:
    """What a run's model changes against the model serving when it was judged: metrics on the
    same images, changed predictions, confusion matrices, data and params since (Markdown, JSON, PNG)."""
    files = Loop(_settings()).report(run_id)
    console.print(files.markdown.read_text())
    console.print(f"report: {files.markdown} (and {files.json.name}, "
                  f"{', '.join(p.name for p in files.pictures) or 'no pictures'})")


@app.command()
def promote(
    run_id: Annotated[str, typer.Argument(help="The training run whose model should serve (`labelloop status`)")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history)")] = "",
) -> None:
    """Promote a run's model (an approved one, or a rejected one on purpose); the queue follows it."""
    record = Loop(_settings()).promote(run_id, reason=reason)
    console.print(f"{record.tag} serves now (run {record.run_id}, accuracy {record.accuracy:.4f})")


@app.command()
def rollback(
    version: Annotated[Optional[str], typer.Argument(
        help="A model version promoted before (default: the one before the current)")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded in the history)")] = "",
) -> None:
    """Serve an earlier model again, exactly as it was promoted; the queue follows it."""
    record = Loop(_settings()).rollback(version, reason=reason)
    console.print(f"{record.tag} serves again (run {record.run_id}, accuracy {record.accuracy:.4f})")


@app.command()
def rescore() -> None:
    """Re-score the unlabeled pool with the serving model and push the predictions."""
    with _progress() as progress:
        pushed = Loop(_settings()).rescore(progress=progress)
    console.print(f"{pushed} predictions pushed")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Workspace, labels, serving model, training runs, errors."""
    st = Loop(_settings()).status()
    if as_json:
        payload = asdict(st)
        payload["serving"] = st.serving.model_dump() if st.serving else None
        console.print_json(json.dumps(payload, default=str))
        return
    console.print(f"workspace      {st.workspace} @ {st.data_commit[:10]} (batch {st.label_batch})")
    held = st.label_quality["held_out"] if st.label_quality else 0
    console.print(f"labels         {st.labels}: {st.training_labels} for training, "
                  f"{st.labels - st.training_labels - held} for evaluation"
                  + (f", {held} suspect labels held out until reviewed" if held else "")
                  + f" ({st.labels_pending_training} since last training)")
    if st.evaluation:
        ev = st.evaluation
        state = "judges the runs" if ev.ready else "still needs " + "; ".join(ev.missing) + \
            " (until then: cross-validation judges)"
        if not ev.ready and ev.labels >= ev.images:
            state += ("; every evaluation image is labeled: lower eval.min_per_class in params.yaml, or raise "
                      "eval.fraction and `labelloop add` images")
        console.print(f"evaluation set {ev.labels} of {ev.images} images labeled; {state}")
    if st.missing_for_first_model:
        console.print("[yellow]first model    waits for labels: " + "; ".join(st.missing_for_first_model) + "[/]")
    console.print(f"last collect   {st.last_collect or 'never'}"
                  + (f" -> {st.last_collect_commit[:10]}" if st.last_collect_commit else ""))
    if st.unpushed_commit:
        console.print(f"[yellow]not pushed     {st.unpushed_commit[:10]} (the DVC remote was unreachable; "
                      "the next collect pushes it)[/]")
    if st.held_back_for_review:
        console.print(f"[yellow]review         {len(st.held_back_for_review)} images where annotators disagree "
                      f"(held back from training): {', '.join(st.held_back_for_review[:5])}[/]")
    if st.requeued_for_review:
        console.print(f"re-queued      {len(st.requeued_for_review)} tasks back in the queue for one more "
                      f"annotator (disagreement or a suspect label): {', '.join(map(str, st.requeued_for_review[:5]))}")
    if st.queue_version:
        console.print(f"queue order    {st.queue_version}")
    if st.pending_deletions:
        console.print(f"deletions      {st.pending_deletions} pending")
    training = st.training_in_progress and f"running ({st.training_in_progress})"
    console.print(f"training       {training or ('queued' if st.training_requested else 'idle')}")
    if st.next_jobs:
        console.print("next jobs      " + ", ".join(f"{job} {when or '-'}" for job, when in sorted(st.next_jobs.items())))
    if st.serving:
        console.print(f"promoted model {st.serving.tag} accuracy {st.serving.accuracy:.4f} "
                      f"data {st.serving.data_commit[:10]} ({st.serving.n_labels} labels)")
    console.print(f"service        {st.service_version or 'not reachable'}")
    if st.image_fetch_failures:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(st.image_fetch_failures.items()))
        console.print(f"[yellow]fetch failures {sum(st.image_fetch_failures.values())} task images since the "
                      f"service started ({reasons}); its log names each cause[/]")
    from loop.monitoring import production_lines

    for line in production_lines(st.production):
        console.print(line)
    from loop.quality import quality_lines

    for line in quality_lines(st.label_quality):
        console.print(line)
    table = Table("run", "status", "trigger", "labels", "accuracy", "judged by", "reason")
    for r in st.runs:
        judged = f"{r.judged_by} ({r.n_judged})" if r.judged_by else "-"
        table.add_row(r.run_id, r.status, r.trigger, str(r.n_labels or "-"),
                      f"{r.accuracy:.4f}" if r.accuracy is not None else "-", judged, r.reason)
    console.print(table)
    if st.promotions:
        history = Table("when", "change", "model", "from", "by", "why", title="serving model history")
        for p in st.promotions[:5]:
            history.add_row(p.at, p.action, p.tag.split(":")[-1], (p.from_tag or "-").split(":")[-1], p.by, p.reason)
        console.print(history)
    for job, error in st.errors.items():
        console.print(f"[red]{job}: {error}[/]")


@app.command()
def up(
    label_studio: Annotated[bool, typer.Option(help="Start Label Studio from its venv")] = True,
) -> None:
    """Start the stack (Label Studio, service, scheduler) and keep it running."""
    from loop.stack import StackLock

    settings = _settings()
    with StackLock(settings.home) as lock:  # one `up` per home; what a dead one left is stopped
        lock.record(label_studio_url=settings.label_studio_url if label_studio else None,
                    service_url=settings.resolved_service_url,
                    dashboard_url=f"http://{settings.service_host}:{settings.dashboard_port}"
                    if settings.dashboard_port else None)
        _run_stack(settings, lock, label_studio=label_studio)


def _run_stack(settings: Settings, lock: "StackLock", *, label_studio: bool) -> None:
    from loop.dashboard import DashboardServer
    from loop.scheduler import build_scheduler
    from loop.stack import LabelStudioServer, ServiceServer
    from serving import read_promotion

    ls = None
    if label_studio:
        ls = LabelStudioServer(settings, settings.label_studio_token_file.parent)
        console.print(f"starting Label Studio at {ls.url} ...")
        ls.start(wait=False)
        lock.add_process("label-studio", ls)
        settings = Settings.load(**{**settings.model_dump(), "label_studio_api_key": ls.token})
    loop = Loop(settings)
    service = ServiceServer(settings)
    scheduler = None
    dashboard = DashboardServer.for_loop(loop)
    try:
        if dashboard is not None:
            dashboard.start()  # first: it shows the stack coming up (the first training, Label Studio starting)
        if not loop.workspace.exists():
            console.print(f"creating a digits workspace at {loop.workspace.root} ...")
            loop.init(starter="digits")
        service.start(wait=False)  # it loads whatever gets promoted
        lock.add_process("service", service)
        if read_promotion(settings.promotion_file) is None:
            console.print("training the first model ...")
            loop.train(trigger="first model", rescore=False)
        if ls is not None:
            ls.wait_ready()
        service.wait_ready()
        loop.connect()
        loop.rescore()
        scheduler = build_scheduler(loop)
        scheduler.start()
        console.print(f"Label Studio  {settings.label_studio_url}  login {settings.label_studio_username}"
                      " (password: $LABELLOOP_LABEL_STUDIO_PASSWORD, default labelloop-admin)")
        console.print(f"Service       {service.url}")
        _print_dashboard(settings, dashboard)
        console.print("Ctrl-C stops everything.")
        _wait_for_stop()
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if dashboard is not None:
            dashboard.stop()
        service.stop()
        if ls is not None:
            ls.stop()


def _print_dashboard(settings: Settings, dashboard: "DashboardServer | None") -> None:
    if dashboard is None:
        console.print("Dashboard     off (LABELLOOP_DASHBOARD_PORT=0)")
        return
    login = ""
    if settings.serving_api_key is not None:
        login = " (login: any user name, the API key $LABELLOOP_SERVING_API_KEY as the password)"
    elif settings.serving.basic_auth is not None:
        login = " (login: $LABELLOOP_SERVING_BASIC_AUTH_USER / _PASSWORD)"
    console.print(f"Dashboard     {dashboard.url}{login}")


def _wait_for_stop() -> None:
    """Block until SIGTERM (Kubernetes, `kill`) or Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


@app.command()
def schedule() -> None:
    """Run only the scheduler (collect, retrain policy, events); SIGTERM stops it.

    Label Studio and the service run elsewhere: what the Kubernetes scheduler Deployment runs."""
    from loop.dashboard import DashboardServer
    from loop.scheduler import build_scheduler

    loop = Loop(_settings())
    if not loop.workspace.exists():
        console.print(f"creating a digits workspace at {loop.workspace.root} ...")
        loop.init(starter="digits")
    dashboard = DashboardServer.for_loop(loop)
    if dashboard is not None:
        dashboard.start()
    try:
        loop.connect()
        scheduler = build_scheduler(loop)
        scheduler.start()
        console.print("scheduler running; SIGTERM stops it")
        _print_dashboard(loop.settings, dashboard)
        try:
            _wait_for_stop()
        finally:
            scheduler.shutdown(wait=True)
    finally:
        if dashboard is not None:
            dashboard.stop()


@app.command()
def dashboard(
    snapshot: Annotated[Optional[Path], typer.Option(
        help="Write the page to this file (pictures inline) and exit, instead of serving it")] = None,
) -> None:
    """Serve the dashboard page on LABELLOOP_DASHBOARD_PORT (the loop may run elsewhere: it reads the
    home, the workspace, the service and Label Studio); SIGTERM or Ctrl-C stops it."""
    from loop.dashboard import DashboardServer, write_snapshot

    loop = Loop(_settings())
    if snapshot is not None:
        console.print(f"dashboard snapshot: {write_snapshot(loop, snapshot)}")
        return
    server = DashboardServer(loop).start()
    _print_dashboard(loop.settings, server)
    try:
        _wait_for_stop()
    finally:
        server.stop()


@app.command()
def demo(
    rounds: int = 5,
    per_round: Annotated[int, typer.Option(help="Tasks the simulated annotator labels per round")] = 30,
    first_round: Annotated[int, typer.Option(help="Tasks labeled in the first round (the cold start)")] = 50,
) -> None:
    """The whole loop from scratch on the digits images (no labels) with a simulated annotator, then stop."""
    from loop.demo import run_demo

    run_demo(_settings(), rounds=rounds, per_round=per_round, first_round=first_round, console=console)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error becomes a message on stderr and an exit code (table above)."""
    try:
        # Standalone mode: click prints usage errors itself (exit 2), --help and --version.
        app(args=argv, prog_name="labelloop")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except LabelloopError as exc:
        _error(str(exc))
        return exc.exit_code
    except OSError as exc:
        _error(f"{exc}; check free disk space, permissions and the path, then run the command again")
        return OS_ERROR_EXIT
    except KeyboardInterrupt:
        return 130
    return 0


def _error(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {message}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
