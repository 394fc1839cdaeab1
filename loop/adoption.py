"""Adopting a Label Studio project that already exists (`labelloop init --from-project ID`).

A team with a project (tasks, some annotations) gets a workspace whose pool is the
project's images, and keeps its project:

1. the project's labeling config gives the classes (one `<Image>`, one `<Choices>`) and the
   task-data key of the image (`value="$photo"` -> `photo`);
2. every task's image is fetched wherever it lives (Label Studio uploads, local files, http(s)
   URLs, data URIs, cloud storage URIs resolved by Label Studio), one chunk at a time, and
   examined like a file of a folder (content hash, dedup, full decode): one import batch, one
   commit. Tasks that already hold an annotation are fetched first and never drawn into the
   evaluation set (it is a uniform sample of what nobody labeled yet); the same content under
   an annotated and an unannotated task counts as annotated;
3. each adopted task is stamped with its image's name (`data[NAME_FIELD]`), so the ordinary
   collect turns the existing annotations into labels, exactly once, like any later ones. A
   task whose image cannot be had (404, not an image) is reported and left alone: it has no
   name, and the collector passes over its annotations.

Stamping happens after the workspace is committed; `name_adopted_tasks` (also called by
`labelloop connect`) finishes it when it was interrupted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from kernel.errors import BadInputError, ConfigError, FetchError, LabelStudioError
from labeling.gateway import NAME_FIELD, ProjectTask
from loop.context import LoopContext
from loop.creation import ModelKind, create_from_images
from loop.imports import ImportReport
from loop.ingest import DownloadExaminer, FoundImage, SkippedFile, classes_from_label_config, image_suffix
from loop.queue import Progress
from loop.workspace import Workspace
from serving.fetch import ImageFetcher, redact_url, storage_resolve_path
from serving.labeling_config import parse_label_config
from serving.protocol import UnprocessableError

__all__ = ["AdoptionReport", "adopt_project", "adopted_images", "name_adopted_tasks", "ADOPTED_ORIGIN"]

log = logging.getLogger(__name__)

#: Images fetched concurrently (and held in memory) at a time.
FETCH_CHUNK = 32
#: How an adopted image's origin starts in the pool shard ("label-studio project 3 task 12 (...)").
ADOPTED_ORIGIN = "label-studio project "


@dataclass
class AdoptionReport:
    """What `init --from-project` did: the import batch, and what became of each task."""

    project_id: int
    title: str
    imports: ImportReport  # the workspace's first batch: added, evaluation, duplicates, skipped, commit
    tasks: int = 0  # tasks the project holds
    annotated: int = 0  # adopted tasks with annotations: the next collect makes them labels
    named: dict[int, str] = field(default_factory=dict)  # task id -> workspace image (duplicates share one)
    unadopted: dict[int, str] = field(default_factory=dict)  # task id -> why its image is not in the pool

    @property
    def commit(self) -> str | None:
        return self.imports.commit

    @property
    def summary(self) -> str:
        return (f"project {self.project_id} ({self.title}): {len(self.named)} of {self.tasks} tasks adopted "
                f"({self.annotated} annotated, collected by the next collect), {len(self.unadopted)} left alone; "
                f"{self.imports.summary}")


def adopt_project(
    ctx: LoopContext, project_id: int, *, image_size: int | None = None, model: ModelKind = "auto",
    weights: str | None = None, progress: Progress | None = None,
) -> tuple[Workspace, AdoptionReport]:
    """A new workspace whose pool is the images of Label Studio project `project_id`, whose
    tasks are then named after them; the loop's state follows that project from now on.
    `ConfigError` for a project that does not exist, is not image classification, or has no
    tasks; the workspace is not created then."""
    settings, gateway = ctx.settings, ctx.gateway
    project = gateway.project_summary(project_id)
    if project is None:
        raise ConfigError(f"Label Studio at {gateway.url} has no project {project_id} that this token can see: "
                          "pass the id from the project's URL (/projects/<id>/)")
    where = f"Label Studio project {project_id} ({project.title})"
    try:
        classes = classes_from_label_config(project.label_config)
        data_key = parse_label_config(project.label_config).data_key
    except (ConfigError, UnprocessableError) as exc:
        raise ConfigError(f"{where} is not an image-classification project: {exc}. labelloop adopts projects "
                          "whose labeling config has one <Image> and one <Choices> over it") from exc
    if project.tasks == 0:
        raise ConfigError(f"{where} has no tasks: import images into it first, or start from a folder of "
                          "images with `labelloop init --images PATH --classes ...`")
    report = AdoptionReport(project_id=project_id, title=project.title, imports=ImportReport(), tasks=project.tasks)
    settings.home.mkdir(parents=True, exist_ok=True)
    ws, report.imports = create_from_images(
        settings.workspace, classes=classes, remote_url=settings.remote_url, image_size=image_size, model=model, weights=weights,
        evaluation=None, found=_project_images(ctx, project_id, data_key, report, progress),
    )
    ctx.workspace = ws
    # Recorded before the stamping, so that `labelloop connect` can finish it if it is interrupted.
    ctx.state.set_marks(project_id=project_id, pushed_commit=report.imports.commit)  # creation pushes
    ctx.state.set_tasks(report.named)
    try:
        name_adopted_tasks(ctx)
    except LabelStudioError as exc:
        raise LabelStudioError(f"{exc}. The workspace {ws.root} is created; run `labelloop connect` to finish "
                               f"naming the tasks of project {project_id}") from exc
    log.info("adopted %s", report.summary)
    return ws, report


def adopted_images(ws: Workspace) -> set[str]:
    """The workspace's images that came from the tasks of an adopted project."""
    return {name for name, row in ws.pool_index().items() if row.source.startswith(ADOPTED_ORIGIN)}


def name_adopted_tasks(ctx: LoopContext) -> dict[int, str]:
    """Stamp every adopted task that does not carry its image's name yet (idempotent: one
    listing of the project, then one update per task still unnamed). Returns {task id:
    image} of the adopted tasks; {} when the workspace adopted no project."""
    ws = ctx.require_workspace()
    adopted = adopted_images(ws)
    project_id = ctx.state.marks().project_id
    tasks = {task: name for task, name in ctx.state.tasks().items() if name in adopted}
    if not tasks or project_id is None:
        return {}
    named = 0
    for task in ctx.gateway.project_tasks(project_id):
        name = tasks.get(task.id)
        if name is not None and task.data.get(NAME_FIELD) != name:
            ctx.gateway.set_task_name(task.id, task.data, name)
            named += 1
    if named:
        log.info("project %s: %d tasks named after their images", project_id, named)
    return tasks


def _project_images(
    ctx: LoopContext, project_id: int, data_key: str, report: AdoptionReport, progress: Progress | None,
) -> Iterator[FoundImage | SkippedFile]:
    """Every task's image, fetched FETCH_CHUNK at a time (one event loop for the whole
    adoption), written to a temporary file, examined, yielded, deleted once consumed.
    Annotated tasks first: content shared with an annotated task is never evaluation."""
    gateway, ls = ctx.gateway, ctx.settings.label_studio
    examiner = DownloadExaminer()
    name_of: dict[str, str] = {}  # sha256 -> image name, for duplicates
    seen: set[int] = set()
    done = 0
    with tempfile.TemporaryDirectory(prefix="labelloop-adopt-") as tmp, asyncio.Runner() as runner:
        fetcher = ImageFetcher(ls.url, ls.token_value(), files_root=ls.files_root,
                               cache_bytes=32 * 1024 * 1024, max_image_bytes=32 * 1024 * 1024)
        for annotated in (True, False):
            tasks = (t for t in gateway.project_tasks(project_id, annotated=annotated) if t.id not in seen)
            while chunk := list(islice(tasks, FETCH_CHUNK)):
                seen.update(t.id for t in chunk)
                urls = [_fetch_url(t, data_key) for t in chunk]
                fetched = runner.run(fetcher.fetch_many([u or "" for u in urls]))
                for task, url, got in zip(chunk, urls, fetched, strict=True):
                    origin = f"{ADOPTED_ORIGIN}{project_id} task {task.id} ({redact_url(_raw_url(task, data_key))})"
                    if url is None:
                        got = BadInputError(f"task data has no image URL under {data_key!r}")
                    if isinstance(got, (FetchError, BadInputError)):
                        item: FoundImage | SkippedFile = SkippedFile(origin, str(got))
                        path = None
                    else:
                        path = Path(tmp) / f"task-{task.id}"
                        path.write_bytes(got)
                        item = examiner.examine(path, origin, suffix=image_suffix(_url_name(_raw_url(task, data_key)), path),
                                                eval_eligible=not annotated)
                    _record(report, task, item, name_of, got, annotated)
                    done += 1
                    if progress:
                        progress("adopting tasks", done, report.tasks)
                    yield item
                    if path is not None:
                        path.unlink(missing_ok=True)
                del fetched


def _record(report: AdoptionReport, task: ProjectTask, item: FoundImage | SkippedFile,
            name_of: dict[str, str], got: object, annotated: bool) -> None:
    """Which image the task shows (its own, or the first task's with the same content), or
    why it has none."""
    if isinstance(item, FoundImage):
        name_of[item.sha256] = name = item.name
    elif item.duplicate and isinstance(got, bytes):
        name = name_of[hashlib.sha256(got).hexdigest()]
    else:
        report.unadopted[task.id] = item.reason
        return
    report.named[task.id] = name
    report.annotated += int(annotated)


def _raw_url(task: ProjectTask, data_key: str) -> str:
    value = task.data.get(data_key)
    return value if isinstance(value, str) else ""


def _fetch_url(task: ProjectTask, data_key: str) -> str | None:
    """Where the fetcher gets the task's image: a cloud storage URI through Label Studio's
    resolver for this task (a redirect to a presigned URL, or the bytes proxied); anything
    else as the task holds it. None: no URL under the config's key."""
    url = _raw_url(task, data_key).strip()
    return storage_resolve_path(url, task.id) if url else None


def _url_name(url: str) -> str:
    """The file name a URL carries, for the stored copy's extension ("" for a data URI)."""
    if url.startswith("data:"):
        return ""
    parts = urlsplit(url)
    local = parse_qs(parts.query).get("d")  # Label Studio local files: the path is in d=
    return local[-1] if local else parts.path
