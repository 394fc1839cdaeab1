"""Setting up and growing: the data workspace (`labelloop init`), the Label Studio side of
it (`labelloop connect`: project from the classes, local-file storage, pool tasks, ML
backend), and new images joining a running loop (`labelloop add`, the watched folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from collections.abc import Sequence

from kernel.errors import ConfigError, LabelloopError
from kernel.layout import IMAGES_DIR
from kernel.settings import Settings
from loop.context import LoopContext
from loop.creation import create_from_images, create_labeled
from loop.imports import ImportReport
from loop.ingest import count_candidates, read_labels_csv, scan_images
from loop.queue import Progress, QueueKeeper
from loop.starter import digits_images, folder_images
from loop.workspace import Workspace
from pipelines.params import EvalParams
from serving import WEBHOOK_SECRET_HEADER, PredictionClient, read_promotion

__all__ = ["create_workspace", "create_workspace_from_images", "connect_project", "add_images"]

log = logging.getLogger(__name__)


def create_workspace(
    settings: Settings, *, starter: str | None = "digits", folder: Path | None = None,
    seed_per_class: int = 2, test_fraction: float = 0.25,
) -> Workspace:
    if folder is not None:
        images = folder_images(folder)
    elif starter == "digits":
        images = digits_images()
    else:
        raise ConfigError("choose a dataset: --starter digits or --from-folder PATH")
    settings.home.mkdir(parents=True, exist_ok=True)
    return create_labeled(
        settings.workspace, images=images, remote_url=settings.remote_url,
        seed_per_class=seed_per_class, test_fraction=test_fraction,
    )


def _scan(folder: Path, classes: Sequence[str], labels_csv: Path | None, labels_from_folders: bool,
          progress: Progress | None, seen: dict[str, tuple[int, int]] | None = None):
    labels = read_labels_csv(labels_csv, classes) if labels_csv is not None else None
    total = count_candidates(folder) if progress else 0
    done = 0

    def on_file(_path: Path) -> None:
        nonlocal done
        done += 1
        if progress:
            progress("importing images", done, total)

    def unchanged(path: Path) -> bool:
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        if seen.get(str(path)) == signature:
            return True
        seen[str(path)] = signature  # read now; a failed import forgets them all (below)
        return False

    return scan_images(folder, classes=classes, labels=labels, labels_from_folders=labels_from_folders,
                       on_file=on_file, labels_file=labels_csv, unchanged=unchanged if seen is not None else None)


def create_workspace_from_images(
    settings: Settings, folder: Path, classes: Sequence[str], *, labels_csv: Path | None = None,
    labels_from_folders: bool = False, image_size: int = 8, evaluation: EvalParams | None = None,
    progress: Progress | None = None,
) -> tuple[Workspace, ImportReport]:
    """`labelloop init --images DIR`: every image joins the pool, deduplicated by content."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return create_from_images(
        settings.workspace, classes=classes, remote_url=settings.remote_url, image_size=image_size,
        evaluation=evaluation, found=_scan(folder, classes, labels_csv, labels_from_folders, progress),
    )


def add_images(
    ctx: LoopContext, queue: QueueKeeper, folder: Path, *, labels_csv: Path | None = None,
    labels_from_folders: bool = False, progress: Progress | None = None,
    seen: dict[str, tuple[int, int]] | None = None,
) -> ImportReport:
    """New images -> one data commit, pushed -> Label Studio tasks (when the project is
    connected) -> queue positions from the serving model (or the cold-start order).
    `seen`: files read before, by path, with their (size, mtime); they are not read again."""
    ws = ctx.require_workspace()
    with ctx.workspace_lock:
        before = dict(seen) if seen is not None else None
        try:
            report = ws.add_images(_scan(folder, ws.classes(), labels_csv, labels_from_folders, progress, seen))
        except BaseException:
            if seen is not None:  # not imported after all: read them again next time
                seen.clear()
                seen.update(before or {})
            raise
        ctx.push_if_needed(report.outputs)
    if report.commit is None or ctx.state.marks().project_id is None:
        return report  # nothing new, or not connected yet: `labelloop connect` imports the pool
    known_tasks = set(ctx.state.tasks())
    report.tasks_imported = len(_import_tasks(ctx, ws).keys() - known_tasks)
    try:
        report.queued = queue.rescore(progress=progress)
    except LabelloopError as exc:  # the images are in; the next promotion or `rescore` queues them
        log.warning("new images imported, but not scored: %s", exc)
        ctx.state.set_job_error("rescore", str(exc))
    return report


def _images_under_files_root(ctx: LoopContext, ws: Workspace) -> Path:
    """The images folder relative to Label Studio's local-files document root."""
    images_dir = ws.root / IMAGES_DIR
    try:
        return images_dir.relative_to(ctx.settings.files_root)
    except ValueError:
        raise ConfigError(
            f"{images_dir} is not under Label Studio's document root {ctx.settings.files_root}; "
            "set LABELLOOP_LABEL_STUDIO_FILES_ROOT to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
        ) from None


def _import_tasks(ctx: LoopContext, ws: Workspace) -> dict[int, str]:
    relative = _images_under_files_root(ctx, ws)
    names = ws.pool_images()
    tasks = ctx.gateway.import_images(ctx.project_id(), names, f"/data/local-files/?d={relative}/",
                                      paths={n: ws.image_relpath(n) for n in names})
    ctx.state.set_tasks(tasks)
    return tasks


def connect_project(ctx: LoopContext, queue: QueueKeeper) -> int:
    """Project (created from the classes), local-file storage, pool tasks, cold-start queue
    when no model exists yet, and the service as ML backend when it is running."""
    ws, settings, gateway = ctx.require_workspace(), ctx.settings, ctx.gateway
    project = gateway.ensure_project(settings.project_title, ws.classes())
    ctx.state.set_marks(project_id=project)
    _images_under_files_root(ctx, ws)
    gateway.ensure_local_storage(project, ws.root / IMAGES_DIR)
    tasks = _import_tasks(ctx, ws)
    log.info("project %s: %d pool tasks", project, len(tasks))
    if read_promotion(settings.promotion_file) is None and not ctx.state.marks().queue_version:
        queue.cold_start()
    serving = settings.serving
    if PredictionClient.for_settings(serving).health() is not None:
        gateway.connect_ml_backend(
            project, serving.url, "labelloop", basic_auth=serving.basic_auth,
            webhook_headers={WEBHOOK_SECRET_HEADER: serving.webhook_secret.get_secret_value()}
            if serving.webhook_secret else None,
        )
    else:
        log.warning("the service at %s is not running: the project has no ML backend until "
                    "`labelloop connect` runs again with the service up", serving.url)
    return project
