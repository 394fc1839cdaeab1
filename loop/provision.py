"""Setting up: the data workspace (`labelloop init`) and the Label Studio side of it
(`labelloop connect`: project from the classes, local-file storage, pool tasks, ML backend)."""

from __future__ import annotations

import logging
from pathlib import Path

from kernel.errors import ConfigError
from kernel.layout import IMAGES_DIR
from kernel.settings import Settings
from loop.context import LoopContext
from loop.queue import QueueKeeper
from loop.starter import digits_images, folder_images
from loop.workspace import Workspace
from serving import WEBHOOK_SECRET_HEADER, PredictionClient, read_promotion

__all__ = ["create_workspace", "connect_project"]

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
    return Workspace.create(
        settings.workspace, images=images, remote_url=settings.remote_url,
        seed_per_class=seed_per_class, test_fraction=test_fraction,
    )


def connect_project(ctx: LoopContext, queue: QueueKeeper) -> int:
    """Project (created from the classes), local-file storage, pool tasks, cold-start queue
    when no model exists yet, and the service as ML backend when it is running."""
    ws, settings, gateway = ctx.require_workspace(), ctx.settings, ctx.gateway
    project = gateway.ensure_project(settings.project_title, ws.classes())
    ctx.state.set_marks(project_id=project)
    images_dir = ws.root / IMAGES_DIR
    try:
        relative = images_dir.relative_to(settings.files_root)
    except ValueError:
        raise ConfigError(
            f"{images_dir} is not under Label Studio's document root {settings.files_root}; "
            "set LABELLOOP_LABEL_STUDIO_FILES_ROOT to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
        ) from None
    gateway.ensure_local_storage(project, images_dir)
    tasks = gateway.import_images(project, ws.pool_images(), f"/data/local-files/?d={relative}/")
    ctx.state.set_tasks(tasks)
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
