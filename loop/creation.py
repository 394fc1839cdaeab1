"""Creating a workspace (`labelloop init`), two ways:

- `create_labeled`: images already sorted into classes (the digits starter, `--from-folder`):
  a held-out test split, a few seed labels per class, the rest the unlabeled pool;
- `create_from_images`: a folder of images with few or no labels (`--images`): every
  readable image joins the pool, and a seeded uniform sample of it becomes the evaluation
  set annotators label.

Both build the whole workspace in a staging folder next to the target and rename it into
place once committed: a killed `init` leaves no workspace (the next one starts over), a
finished one is complete. The push comes after (pushing is idempotent, and the loop pushes
an unpushed HEAD before it uses it)."""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import yaml

from kernel.errors import WorkspaceError
from kernel.layout import LABELS_DIR, PARAMS_FILE, TEST_DIR, TEST_IMAGES_DIR, TEST_LABELS
from loop.imports import ImportBatch, ImportReport
from loop.ingest import FoundImage, SkippedFile
from loop.starter import StarterImage
from loop.workspace import CURSOR_FILE, Cursor, Workspace
from pipelines.labels import SEED_SHARD
from pipelines.params import DataParams, EvalParams, Params
from pipelines.pool import INIT_BATCH
from pipelines.stages import DVC_PIPELINE

__all__ = ["create_labeled", "create_from_images"]

log = logging.getLogger(__name__)

Fill = Callable[[Workspace], tuple[list[Path], str]]  # writes the tree -> (DVC outputs, commit message)


def create_labeled(
    root: Path, *, images: Sequence[StarterImage], remote_url: str, seed_per_class: int = 2,
    test_fraction: float = 0.25, image_size: int = 8, random_seed: int = 0,
) -> Workspace:
    """From images already sorted into classes: a held-out test split, `seed_per_class`
    seed labels per class, the rest unlabeled pool (no evaluation sample: the test split
    judges)."""
    _check_target(root)
    if not 0 < test_fraction < 1:
        raise WorkspaceError("test_fraction must be between 0 and 1")
    classes = sorted({image.label for image in images}, key=_class_sort_key)
    if len(classes) < 2:
        raise WorkspaceError("a classifier needs at least two classes of images")
    params = Params(data=DataParams(classes=classes, image_size=image_size), eval=EvalParams(fraction=0))

    def fill(ws: Workspace) -> tuple[list[Path], str]:
        test, seed, pool = _split(images, classes, seed_per_class, test_fraction, random_seed)
        _write_test_split(ws.root, test)
        batch = ImportBatch(ws.root, INIT_BATCH, known_sha256=set(), eval_params=params.evaluation,
                            eval_held=0, report=ImportReport())
        for item, split in [(i, "seed") for i in seed] + [(i, "pool") for i in pool]:
            batch.add_bytes(item.name, item.sha256, item.png, split=split,
                            label=item.label if split == "seed" else None)
        outs = batch.finish(seed_shard=SEED_SHARD) + [TEST_DIR]
        return outs, (f"labelloop init: {len(seed)} seed labels, {len(pool)} pool images, "
                      f"{len(test)} held-out test images")

    return _build(root, params, remote_url, fill)


def create_from_images(
    root: Path, *, classes: Sequence[str], found: Iterable[FoundImage | SkippedFile], remote_url: str,
    image_size: int = 8, evaluation: EvalParams | None = None,
) -> tuple[Workspace, ImportReport]:
    """From a folder of (mostly) unlabeled images: every readable image joins the pool,
    a seeded uniform sample of them is reserved for the evaluation set annotators label."""
    _check_target(root)
    params = Params(data=DataParams(classes=list(classes), image_size=image_size), eval=evaluation or EvalParams())
    report = ImportReport()

    def fill(ws: Workspace) -> tuple[list[Path], str]:
        batch = ImportBatch(ws.root, INIT_BATCH, known_sha256=set(), eval_params=params.evaluation,
                            eval_held=0, report=report)
        batch.add_found(found)
        _write_test_split(ws.root, [])  # no labeled test set: annotators label the evaluation sample
        if not report.added:
            raise WorkspaceError("no usable images found: " + (
                f"{len(report.skipped)} files skipped, e.g. {report.skipped[0].source}: {report.skipped[0].reason}"
                if report.skipped else "the folder holds no image files"))
        return batch.finish() + [TEST_DIR], f"labelloop init: {report.summary}"

    ws = _build(root, params, remote_url, fill)
    report.commit = ws.head()
    return ws, report


def _build(root: Path, params: Params, remote_url: str, fill: Fill) -> Workspace:
    root = root.resolve()
    _check_target(root)
    staging = root.parent / f".{root.name}.init-partial"
    if staging.exists():
        log.warning("removing %s, left by an interrupted `labelloop init`", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    ws = Workspace(staging)
    try:
        params.dump(staging / PARAMS_FILE)
        (staging / "dvc.yaml").write_text(yaml.safe_dump(DVC_PIPELINE, sort_keys=False))
        (staging / ".gitignore").write_text("/build/\n/plots/\n")
        (staging / LABELS_DIR).mkdir(parents=True)
        (staging / CURSOR_FILE).write_text(json.dumps(asdict(Cursor()), indent=2) + "\n")
        ws.init_repos(remote_url)
        outs, message = fill(ws)
        ws.dvc_add(outs)
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", message)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if root.exists():
        root.rmdir()  # empty (checked above)
    staging.rename(root)
    # Machine-local DVC settings name the staging folder: dropped before DVC opens the repo
    # again (it would recreate that folder), then written for the final one.
    (root / ".dvc" / "config.local").unlink(missing_ok=True)
    ws = Workspace(root)
    ws.configure_local_dvc()
    ws.push()
    return ws


def _write_test_split(root: Path, test: Sequence[StarterImage]) -> None:
    (root / TEST_IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for item in test:
        (root / TEST_IMAGES_DIR / item.name).write_bytes(item.png)
    with (root / TEST_LABELS).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        writer.writerows((item.name, item.label) for item in test)


def _check_target(root: Path) -> None:
    root = root.resolve()
    if (root / ".git").exists() or (root / ".dvc").exists():
        raise WorkspaceError(f"{root} already holds a workspace; add images to it with "
                             "`labelloop add DIR`, or choose an empty directory")
    if root.exists() and any(root.iterdir()):
        raise WorkspaceError(f"{root} is not empty; choose an empty directory")


def _class_sort_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _split(images, classes, seed_per_class, test_fraction, random_seed):
    """Stratified: a held-out test split, `seed_per_class` labeled images, the rest pool."""
    rng = random.Random(random_seed)
    test, seed, pool = [], [], []
    for cls in classes:
        members = sorted((i for i in images if i.label == cls), key=lambda i: i.name)
        rng.shuffle(members)
        n_test = max(1, round(len(members) * test_fraction)) if len(members) > 1 else 0
        test += members[:n_test]
        seed += members[n_test : n_test + seed_per_class]
        pool += members[n_test + seed_per_class :]
    by_name = lambda i: i.name  # noqa: E731
    return sorted(test, key=by_name), sorted(seed, key=by_name), sorted(pool, key=by_name)
