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
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from kernel.errors import WorkspaceError
from kernel.layout import LABELS_DIR, PARAMS_FILE, TEST_DIR, TEST_IMAGES_DIR, TEST_LABELS
from loop.imports import ImportBatch, ImportReport
from loop.ingest import FoundImage, SkippedFile
from loop.starter import StarterImage
from loop.workspace import CURSOR_FILE, Cursor, Workspace
from pipelines.labels import SEED_SHARD
from pipelines.models import build_backbone, resolve_weights
from pipelines.params import DataParams, EvalParams, ModelParams, Params
from pipelines.pool import INIT_BATCH
from pipelines.stages import DVC_PIPELINE

__all__ = ["ModelKind", "choose_model", "create_labeled", "create_from_images"]

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
    image_size: int | None = None, evaluation: EvalParams | None = None, model: ModelKind = "auto",
    weights: str | None = None,
) -> tuple[Workspace, ImportReport]:
    """From a folder of (mostly) unlabeled images: every readable image joins the pool,
    a seeded uniform sample of them is reserved for the evaluation set annotators label.
    `model` "auto": the model family is chosen from the images (`choose_model`); `weights`:
    a backbone's starting weights (params `model.weights`; default imagenet)."""
    _check_target(root)
    params = Params(data=DataParams(classes=list(classes), image_size=image_size or SMALL_CNN_SIZE),
                    eval=evaluation or EvalParams())
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
        chosen, report.model = choose_model(params, batch.images_dir, model, image_size, weights)
        if chosen.model.kind == "backbone" and chosen.model.weights not in ("imagenet", "none"):
            # A file that does not fit is refused now, not at the first training run.
            build_backbone(chosen, resolve_weights(chosen.model.weights))
        chosen.dump(ws.root / PARAMS_FILE)
        return batch.finish() + [TEST_DIR], f"labelloop init: {report.summary}; model: {report.model}"

    ws = _build(root, params, remote_url, fill)
    report.commit = ws.head()
    return ws, report


ModelKind = Literal["auto", "small_cnn", "backbone"]
#: Input sizes of the two families: digits-like images are learnt at 8x8 by the small CNN;
#: 96 px is where MobileNetV3Small starts to see a photo's content yet trains fast.
SMALL_CNN_SIZE, BACKBONE_SIZE = 8, 96
#: A sample of this many images decides `auto`; photos are at least this many pixels on
#: their shorter side (median).
CHOICE_SAMPLE, PHOTO_MIN_SIDE = 50, 64


def choose_model(params: Params, images_dir: Path, model: ModelKind, image_size: int | None,
                 weights: str | None = None) -> tuple[Params, str]:
    """The params' model family and input for these images, and why, in words. "auto":
    photos (median shorter side >= PHOTO_MIN_SIDE) get a pretrained backbone (RGB,
    centre-cropped, ImageNet weights), small images the small CNN (grey, squashed)."""
    reason = "chosen with --model"
    if model == "auto":
        colour, sides = _sample_images(images_dir)
        side = int(statistics.median(sides)) if sides else 0
        photos = side >= PHOTO_MIN_SIDE  # grey photos too: a backbone sees grey as grey RGB
        model = "backbone" if photos else "small_cnn"
        reason = (f"median shorter side {side} px of {len(sides)} sampled images ({colour} in colour): "
                  + ("photos" if photos else f"small images, under {PHOTO_MIN_SIDE} px"))
    if model == "backbone":
        data = params.data.model_copy(update={"image_size": image_size or BACKBONE_SIZE, "channels": 3,
                                              "resize": "center_crop"})
        chosen = params.model_copy(update={"data": data, "model": ModelParams(
            kind="backbone", **({"weights": weights} if weights else {}))})
        summary = (f"backbone {chosen.model.backbone} ({chosen.model.weights} weights, frozen) at "
                   f"{data.image_size}x{data.image_size} RGB, centre-cropped")
    else:
        data = params.data.model_copy(update={"image_size": image_size or SMALL_CNN_SIZE, "channels": 1,
                                              "resize": "squash"})
        chosen = params.model_copy(update={"data": data, "model": ModelParams(kind="small_cnn")})
        summary = f"small_cnn at {data.image_size}x{data.image_size} grey"
    return chosen, f"{summary} ({reason}; change `model:` and `data:` in params.yaml)"


def _sample_images(images_dir: Path) -> tuple[int, list[int]]:
    """(how many of a sample are in colour, their shorter sides), reading a thumbnail each."""
    from PIL import Image

    from pipelines.images import decode_image, to_rgb

    files = sorted(p for p in images_dir.iterdir() if p.is_file())[:CHOICE_SAMPLE] if images_dir.is_dir() else []
    colour, sides = 0, []
    for path in files:
        with Image.open(path) as image:
            sides.append(min(image.size))
            rgb = to_rgb(decode_image(image)).reduce(max(1, min(image.size) // 32))
        pixels = np.asarray(rgb, dtype=np.int16)
        colour += int(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max() > 12)  # not grey
    return colour, sides


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
