"""Starting from what users have (issue 13): a folder of unlabeled images -> `init --images`,
new images later -> `add`, with real git + DVC and a local remote; the CLI as users run it
(a real process, killed for real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernel.errors import ConfigError, WorkspaceError
from kernel.settings import Settings
from loop.core import Loop
from loop.creation import create_from_images
from loop.ingest import scan_images
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from pipelines.params import EvalParams
from pipelines.prepare import label_splits

CLASSES = ["dark", "bright"]


def _photos(folder: Path, n: int, *, start: int = 0, seed: int = 0) -> Path:
    """`n` distinct colour images of mixed sizes and formats, nested, with awkward names."""
    rng = np.random.default_rng(seed + start)
    for i in range(start, start + n):
        sub = folder / ("sous-dossier été" if i % 3 == 0 else "") / ("deep" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
        pixels = (rng.random((size[1], size[0], 3)) * (80 if i % 2 else 255)).astype("uint8")
        pixels[0, 0] = [i % 256, (i // 256) % 256, 7]  # distinct content for every i
        fmt = ("PNG", ".png") if i % 4 else ("JPEG", ".jpg")
        Image.fromarray(pixels).save(sub / f"photo {i} ü{fmt[1]}", format=fmt[0], quality=100)
    return folder


def _remote_files(remote: Path) -> int:
    return sum(1 for p in remote.rglob("*") if p.is_file())


def _settings(tmp_path: Path, **overrides) -> Settings:
    return Settings.load(home=tmp_path / "home", workspace=tmp_path / "ws", label_studio_files_root=tmp_path,
                         **overrides)


def _cli(tmp_path: Path, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    environ = {**os.environ, "LABELLOOP_HOME": str(tmp_path / "home"), "LABELLOOP_WORKSPACE": str(tmp_path / "ws"),
               "LABELLOOP_LABEL_STUDIO_FILES_ROOT": str(tmp_path), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "loop.cli", *args], env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_init_from_an_unlabeled_folder_keeps_every_readable_image_once(tmp_path):
    photos = _photos(tmp_path / "photos", 60)
    (photos / "empty.png").write_bytes(b"")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("shopping list")
    (photos / "copy of 1.png").write_bytes((photos / "photo 1 ü.png").read_bytes())

    ws, report = create_from_images(tmp_path / "ws", classes=CLASSES, found=scan_images(photos, classes=CLASSES),
                                    remote_url=str(tmp_path / "remote"), evaluation=EvalParams(fraction=0.25))

    assert report.added == 60 and report.duplicates == 1
    assert sorted(s.source.name for s in report.skipped) == ["broken.jpg", "empty.png", "notes.txt"]
    assert all(s.reason for s in report.skipped)
    assert ws.git("rev-list", "--count", "HEAD") == "1" and ws.git("status", "--porcelain") == ""
    pool = ws.pool_index()
    assert len(pool) == 60 and all(ws.image_path(name).exists() for name in pool)
    # The evaluation sample is recorded in the data commit, roughly the fraction asked for.
    evaluation = ws.eval_images()
    assert 5 <= len(evaluation) <= 25
    assert "eval" in ws.git("show", "HEAD:data/pool/init.csv")
    assert ws.params().evaluation.fraction == 0.25
    assert not ws.label_splits().test and ws.events() == []
    assert _remote_files(tmp_path / "remote") >= 60
    # Nothing labeled yet: cross-validation would judge; evaluation images are not training data.
    assert label_splits(ws.params(), ws.root).judged_by == "cv"


def test_add_is_one_commit_of_only_the_new_images_and_knows_what_the_pool_holds(tmp_path):
    photos = _photos(tmp_path / "photos", 30)
    loop = Loop(_settings(tmp_path))
    loop.init_from_images(photos, CLASSES)
    ws = loop.workspace
    remote = Path(loop.settings.remote_url)
    before_remote = _remote_files(remote)

    _photos(photos, 12, start=30)
    report = loop.add(photos)
    assert (report.added, report.already_in_pool, report.batch) == (12, 30, "add-000001")
    assert ws.git("rev-list", "--count", "HEAD") == "2"
    changed = ws.git("show", "--name-only", "--format=", "HEAD").splitlines()
    # Only the batch's own files: its DVC pointer, its pool shard, the images .gitignore.
    assert sorted(changed) == ["data/images/.gitignore", "data/images/add-000001.dvc", "data/pool/add-000001.csv"]
    assert len(ws.pool_images()) == 42
    assert _remote_files(remote) - before_remote >= 12  # pushed
    assert loop.state.marks().pushed_commit == ws.head()

    again = loop.add(photos)
    assert again.commit is None and again.added == 0 and again.already_in_pool == 42
    assert ws.git("rev-list", "--count", "HEAD") == "2"


def test_labels_the_user_has_join_as_training_labels_never_as_evaluation(tmp_path):
    photos = _photos(tmp_path / "photos", 40)
    labeled = sorted(p for p in photos.rglob("*.png"))[:6]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,label\n" + "".join(f"{p.relative_to(photos).as_posix()},dark\n" for p in labeled))
    loop = Loop(_settings(tmp_path))
    report = loop.init_from_images(photos, CLASSES, labels_csv=csv_path, evaluation=EvalParams(fraction=0.5))
    assert report.labeled == 6
    splits = loop.workspace.label_splits()
    assert len(splits.train) == 6 and set(splits.train.values()) == {"dark"}
    assert not set(splits.train) & loop.workspace.eval_images()
    assert loop.status().missing_for_first_model == ["class 'bright': 0 of 2 labels"]


def test_evaluation_labels_are_never_training_labels_and_judge_once_there_are_enough(tmp_path):
    photos = _photos(tmp_path / "photos", 80)
    loop = Loop(_settings(tmp_path))
    loop.init_from_images(photos, CLASSES, evaluation=EvalParams(fraction=0.3, min_labels=6, min_per_class=2))
    ws = loop.workspace
    evaluation = sorted(ws.eval_images())
    pool = [n for n in ws.pool_images() if n not in set(evaluation)]
    events = [LabelEvent(image=name, label=CLASSES[i % 2], task_id=i, annotation_id=i, annotator="1",
                         annotation_updated_at="2026-01-01T00:00:00.000000Z")
              for i, name in enumerate(pool[:4] + evaluation[:5])]
    ws.commit_labels(events, Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z"))
    splits = ws.label_splits()
    assert set(splits.train) == set(pool[:4]) and set(splits.evaluation) == set(evaluation[:5])
    assert splits.judged_by == "cv"  # 5 of 6 evaluation labels
    status = loop.status()
    assert status.evaluation is not None and status.evaluation.labels == 5 and not status.evaluation.ready
    assert "5 of 6 labels" in status.evaluation.missing
    assert status.training_labels == 4 and status.missing_for_first_model == []

    more = [LabelEvent(image=evaluation[5 + i], label=CLASSES[i % 2], task_id=100 + i, annotation_id=100 + i,
                       annotator="1", annotation_updated_at="2026-01-01T00:00:01.000000Z") for i in range(2)]
    ws.commit_labels(more, Cursor(batch=2, updated_at="2026-01-01T00:00:01.000000Z"))
    assert ws.label_splits().judged_by == "eval"
    assert loop.status().evaluation.ready


def test_init_refuses_a_workspace_that_exists_and_bad_class_lists(tmp_path):
    photos = _photos(tmp_path / "photos", 8)
    Loop(_settings(tmp_path)).init_from_images(photos, CLASSES)
    with pytest.raises(WorkspaceError, match="already holds a workspace"):
        Loop(_settings(tmp_path)).init_from_images(photos, CLASSES)
    for classes, message in (("cat,,dog", "empty"), ("cat,cat", "cat"), ("cat", "at least 2 classes")):
        done = _cli(tmp_path, "init", str(tmp_path / "other"), "--images", str(photos), "--classes", classes)
        out, err = done.communicate(timeout=120)
        assert done.returncode == 2, err
        assert message in err and "Traceback" not in err
    done = _cli(tmp_path, "init", str(tmp_path / "other"), "--images", str(photos))
    assert done.wait(timeout=120) == 2 and "--classes" in done.stderr.read()


def test_a_killed_add_leaves_nothing_and_the_rerun_finishes_the_job(tmp_path):
    photos = _photos(tmp_path / "photos", 20)
    loop = Loop(_settings(tmp_path))
    loop.init_from_images(photos, CLASSES)
    head = loop.workspace.head()
    _photos(photos, 10, start=20)

    for point in ("add:images-written", "add:dvc-added"):
        killed = _cli(tmp_path, "add", str(photos), env={"LABELLOOP_FAULT_KILL_AT": point})
        assert killed.wait(timeout=300) == -signal.SIGKILL
        assert loop.workspace.head() == head  # nothing half-done was committed

    done = _cli(tmp_path, "add", str(photos))
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    ws = loop.workspace
    assert ws.git("rev-list", "--count", "HEAD") == "2" and ws.git("status", "--porcelain") == ""
    assert sorted(p.name for p in (ws.root / "data/images").iterdir() if p.is_dir()) == ["add-000001", "init"]
    assert len(ws.pool_images()) == 30 and len({p.sha256 for p in ws.pool_index().values()}) == 30
    assert "10 new images" in out


def test_a_killed_init_leaves_no_workspace_and_the_rerun_creates_it(tmp_path):
    photos = _photos(tmp_path / "photos", 150)
    staging = tmp_path / ".ws.init-partial"
    proc = _cli(tmp_path, "init", "--images", str(photos), "--classes", "dark,bright")
    deadline = time.monotonic() + 120
    while not (staging / "data" / "images").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "init finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (tmp_path / "ws").exists()  # no half workspace where the user looks

    done = _cli(tmp_path, "init", "--images", str(photos), "--classes", "dark,bright")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert not staging.exists()
    assert len(Loop(_settings(tmp_path)).workspace.pool_images()) == 150


def test_the_watched_folder_syncs_new_images_and_does_not_read_old_ones_again(tmp_path):
    watched = _photos(tmp_path / "inbox", 10)
    loop = Loop(_settings(tmp_path, watch_folder=watched))
    loop.init_from_images(watched, CLASSES)
    first = loop.sync_watched_folder()  # a new process reads the folder once
    assert first.commit is None and first.already_in_pool == 10
    _photos(watched, 5, start=10)
    second = loop.sync_watched_folder()
    assert second.added == 5 and second.already_in_pool == 0  # the 10 known files were not read
    assert loop.sync_watched_folder().commit is None
    assert len(loop.workspace.pool_images()) == 15

    status = _cli(tmp_path, "status", env={"COLUMNS": "200"})
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err
    assert "first model    waits for labels: class 'dark': 0 of 2 labels" in out
    assert "evaluation set" in out or not loop.workspace.eval_images()


def test_init_chooses_the_model_from_the_images_and_refuses_weights_that_do_not_fit(tmp_path):
    """Photos (median side >= 64 px) get a backbone, small images the small CNN; a weights
    file of another architecture is refused by `init`, which then leaves no workspace."""
    from pipelines.models import build_backbone, resolve_weights
    from pipelines.params import Params
    from tests.helpers.colour_images import PATTERNS, write_colour_images

    write_colour_images(tmp_path / "photos", 6, seed=1, sides=(80, 120))
    write_colour_images(tmp_path / "icons", 6, seed=2)
    photos = Loop(_settings(tmp_path / "a")).init_from_images(tmp_path / "photos", list(PATTERNS))
    assert photos.model.startswith("backbone MobileNetV3Small (imagenet weights, frozen) at 96x96 RGB")
    icons = Loop(_settings(tmp_path / "b")).init_from_images(tmp_path / "icons", list(PATTERNS))
    assert icons.model.startswith("small_cnn at 8x8 grey") and "under 64 px" in icons.model
    large = Params(data={"classes": list(PATTERNS), "image_size": 32, "channels": 3},
                   model={"kind": "backbone", "backbone": "MobileNetV3Large", "weights": "none"})
    wrong = tmp_path / "large.weights.h5"
    build_backbone(large, resolve_weights("none")).save_weights(str(wrong))  # another architecture
    settings = _settings(tmp_path / "c")
    with pytest.raises(ConfigError, match="does not fit MobileNetV3Small at 96x96"):
        Loop(settings).init_from_images(tmp_path / "photos", list(PATTERNS), weights=str(wrong))
    assert not settings.workspace.exists()
