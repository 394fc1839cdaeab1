"""Setting up and growing: the data workspace (`labelloop init`), the Label Studio side of
it (`labelloop connect`: project from the classes, local-file storage, pool tasks, ML
backend), and new images joining a running loop (`labelloop add`, the watched folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from collections.abc import Callable, Iterable, Mapping, Sequence

from kernel.errors import ConfigError, LabelloopError
from kernel.layout import IMAGES_DIR
from kernel.settings import Settings
from loop.adoption import ADOPTED_ORIGIN, name_adopted_tasks
from loop.context import LoopContext
from loop.creation import ModelKind, create_from_images, create_labeled
from loop.imports import ImportReport
from loop.ingest import FoundImage, SkippedFile, count_candidates, read_labels_csv, scan_images
from loop.queue import Progress, QueueKeeper
from loop.s3images import S3Location, is_s3_url, s3_credentials, scan_s3
from loop.starter import digits_images, folder_images
from loop.workspace import Workspace
from pipelines.params import EvalParams
from serving import WEBHOOK_SECRET_HEADER, PredictionClient, read_promotion

__all__ = ["create_workspace", "create_workspace_from_images", "connect_project", "add_images", "add_found_images",
           "PRODUCTION_ORIGIN", "PRODUCTION_TASK_DATA"]

log = logging.getLogger(__name__)

#: A captured client image's origin in the pool shard: `production:<capture file name>`.
PRODUCTION_ORIGIN = "production:"
#: Task data of a captured client image, for annotators and the Data Manager's filters.
PRODUCTION_TASK_DATA = {"source": "production"}


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


ImageSource = Path | str  # a local folder or file, or an s3://bucket/prefix URL


def _scan(source: ImageSource, classes: Sequence[str], labels_csv: Path | None, labels_from_folders: bool,
          progress: Progress | None, seen: dict[str, tuple] | None = None, *, endpoint_url: str | None = None,
          pinned: Mapping[str, str] | None = None) -> Iterable[FoundImage | SkippedFile]:
    """The images of a folder or an S3 prefix. `seen`: what a watch read before, by path or
    object URL, with its (size, mtime) or (ETag,): passed over unread while unchanged.
    `pinned`: {origin: sha256} of the pool; an origin imported before whose content changed
    since is reported, not imported (the pool keeps the bytes its labels were made on)."""
    labels = read_labels_csv(labels_csv, classes) if labels_csv is not None else None
    done = 0

    def tick(total: int) -> None:
        nonlocal done
        done += 1
        if progress:
            progress("importing images", done, total)

    def first_sight(key: str, signature: tuple) -> bool:
        if seen is None:
            return True
        if seen.get(key) == signature:
            return False
        seen[key] = signature  # read now; a failed import forgets them all (`add_images`)
        return True

    if isinstance(source, str) and is_s3_url(source):
        found = scan_s3(source, classes=classes, labels=labels, labels_from_folders=labels_from_folders,
                        endpoint_url=endpoint_url, on_object=lambda _key, total: tick(total),
                        unchanged=lambda url, etag: not first_sight(url, (etag,)),
                        require_objects=seen is None)
    else:
        folder = Path(source)
        total = count_candidates(folder) if progress else 0

        def unchanged(path: Path) -> bool:
            stat = path.stat()
            return not first_sight(str(path), (stat.st_size, stat.st_mtime_ns))

        found = scan_images(folder, classes=classes, labels=labels, labels_from_folders=labels_from_folders,
                            on_file=lambda _path: tick(total), labels_file=labels_csv,
                            unchanged=unchanged if seen is not None else None)
    return _report_changed(found, pinned) if pinned else found


def _report_changed(found: Iterable[FoundImage | SkippedFile], pinned: Mapping[str, str]):
    for item in found:
        if isinstance(item, FoundImage) and item.where in pinned and pinned[item.where] != item.sha256:
            yield SkippedFile(item.where, "changed since it was imported: the pool keeps the content its labels "
                                          "were made on; put new content under a new name to add it")
            continue
        yield item


def create_workspace_from_images(
    settings: Settings, folder: ImageSource, classes: Sequence[str], *, labels_csv: Path | None = None,
    labels_from_folders: bool = False, image_size: int | None = None, evaluation: EvalParams | None = None,
    model: ModelKind = "auto", weights: str | None = None,
    progress: Progress | None = None,
) -> tuple[Workspace, ImportReport]:
    """`labelloop init --images DIR|s3://bucket/prefix`: every image joins the pool,
    deduplicated by content."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return create_from_images(
        settings.workspace, classes=classes, remote_url=settings.remote_url, image_size=image_size, model=model, weights=weights,
        evaluation=evaluation, found=_scan(folder, classes, labels_csv, labels_from_folders, progress,
                    endpoint_url=settings.s3_endpoint_url),
    )


def add_images(
    ctx: LoopContext, queue: QueueKeeper, folder: ImageSource, *, labels_csv: Path | None = None,
    labels_from_folders: bool = False, progress: Progress | None = None,
    seen: dict[str, tuple] | None = None,
) -> ImportReport:
    """New images -> one data commit, pushed -> Label Studio tasks (when the project is
    connected) -> queue positions from the serving model (or the cold-start order).
    `seen`: files (objects) read before, by path (URL), with their (size, mtime) (ETag): they
    are not read again."""
    ws = ctx.require_workspace()

    def scan(pinned: Mapping[str, str]) -> Iterable[FoundImage | SkippedFile]:
        return _scan(folder, ws.classes(), labels_csv, labels_from_folders, progress, seen,
                     endpoint_url=ctx.settings.s3_endpoint_url, pinned=pinned)

    return _add_to_pool(ctx, queue, scan, progress=progress, seen=seen)


def add_found_images(ctx: LoopContext, queue: QueueKeeper, found: Iterable[FoundImage | SkippedFile], *,
                     progress: Progress | None = None) -> ImportReport:
    """Images found elsewhere (captured client images, `loop.monitoring`) join the pool as
    `add`'s do: one data commit, pushed, tasks, queued."""
    return _add_to_pool(ctx, queue, lambda _pinned: found, progress=progress)


def _add_to_pool(
    ctx: LoopContext, queue: QueueKeeper, scan: Callable[[Mapping[str, str]], Iterable[FoundImage | SkippedFile]], *,
    progress: Progress | None = None, seen: dict[str, tuple] | None = None,
) -> ImportReport:
    ws = ctx.require_workspace()
    with ctx.workspace_lock:
        before = dict(seen) if seen is not None else None
        try:
            pinned = {row.source: row.sha256 for row in ws.pool_index().values() if is_s3_url(row.source)}
            report = ws.add_images(scan(pinned))
        except BaseException:
            if seen is not None:  # not imported after all: read them again next time
                seen.clear()
                seen.update(before or {})
            raise
        ctx.push_if_needed(report.outputs)
    if ctx.state.marks().project_id is None:
        return report  # not connected yet: `labelloop connect` imports the pool
    known_tasks = ctx.state.tasks()
    if report.commit is None and not _tasks_missing(ws, set(known_tasks.values())):
        return report  # nothing new (an import cut short after its commit is finished below)
    _ensure_storages(ctx, ws, ctx.project_id())  # a first image from a new bucket
    report.tasks_imported = len(_import_tasks(ctx, ws).keys() - known_tasks.keys())
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


def _task_urls(ws: Workspace) -> tuple[dict[str, str], list[str]]:
    """({image: URL} for images Label Studio shows from the bucket they live in, the images
    shown from the workspace copy as local files); an adopted project's images have tasks."""
    in_buckets: dict[str, str] = {}
    local: list[str] = []
    for name, row in ws.pool_index().items():
        if row.source.startswith(ADOPTED_ORIGIN):
            continue  # an adopted project's task shows it from where the project keeps it
        if is_s3_url(row.source):
            in_buckets[name] = row.source
        else:
            local.append(name)
    return in_buckets, local


def _ensure_storages(ctx: LoopContext, ws: Workspace, project: int) -> None:
    """Label Studio resolves a task's image through a storage of its project: the local-file
    storage over the workspace images, and one S3 source storage per bucket (presigned URLs;
    never synced: labelloop imports the tasks, one per pool image)."""
    in_buckets, local = _task_urls(ws)
    if local:
        _images_under_files_root(ctx, ws)
        ctx.gateway.ensure_local_storage(project, ws.root / IMAGES_DIR)
    if in_buckets:
        credentials = s3_credentials(ctx.settings.s3_endpoint_url)
        for bucket in sorted({S3Location.parse(url).bucket for url in in_buckets.values()}):
            ctx.gateway.ensure_s3_storage(project, bucket, credentials, presign=ctx.settings.s3_presign)


def _tasks_missing(ws: Workspace, known: set[str]) -> bool:
    """Pool images that should have a task and have none known: an import stopped after its
    data commit (Label Studio down, a crash) leaves them; the next import finishes it."""
    in_buckets, local = _task_urls(ws)
    shown = set(in_buckets) | set(local)
    return any(name in shown and name not in known for name in ws.pool_images())


def _import_tasks(ctx: LoopContext, ws: Workspace) -> dict[int, str]:
    in_buckets, local = _task_urls(ws)
    prefix = f"/data/local-files/?d={_images_under_files_root(ctx, ws)}/" if local else ""
    urls = {n: f"{prefix}{ws.image_relpath(n)}" for n in local}
    urls.update(in_buckets)
    names = [n for n in ws.pool_images() if n in urls]  # pool order; adopted images have their tasks
    extra = {name: PRODUCTION_TASK_DATA for name, row in ws.pool_index().items()
             if row.source.startswith(PRODUCTION_ORIGIN)}
    tasks = ctx.gateway.import_images(ctx.project_id(), names, urls, extra)
    ctx.state.set_tasks(tasks)
    return tasks


def connect_project(ctx: LoopContext, queue: QueueKeeper) -> int:
    """Project (created from the classes), local-file storage, pool tasks, cold-start queue
    when no model exists yet, and the service as ML backend when it is running."""
    ws, settings, gateway = ctx.require_workspace(), ctx.settings, ctx.gateway
    # `init --from-project`: the adopted project, whatever its title; its tasks exist (they
    # are named here if the adoption was cut short) and need no storage of labelloop's.
    if name_adopted_tasks(ctx):
        project = ctx.project_id()
    else:
        project = gateway.ensure_project(settings.project_title, ws.classes())
        ctx.state.set_marks(project_id=project)
    _ensure_storages(ctx, ws, project)  # for images added since (an adopted pool needs none)
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
