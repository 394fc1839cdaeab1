import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kernel.errors import WorkspaceError
from loop.starter import folder_images
from loop.creation import create_labeled
from loop.workspace import Cursor, Workspace
from pipelines.labels import LabelEvent, labels_by_image, read_events


def _folders(root: Path, per_class: int = 6) -> Path:
    for label, shade in (("cat", 40), ("dog", 200)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (10 + i, 12), shade + i).save(root / label / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def _remote_objects(remote: Path) -> set[str]:
    return {p.name for p in remote.rglob("*") if p.is_file()}


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    images = folder_images(_folders(tmp_path / "folders"))
    return create_labeled(tmp_path / "ws", images=images, remote_url=str(tmp_path / "remote"),
                            seed_per_class=2, test_fraction=0.34)


def test_import_of_class_folders_splits_and_pushes(workspace, tmp_path):
    assert workspace.classes() == ["cat", "dog"]
    assert len(workspace.events()) == 4  # 2 seed labels per class
    assert len(workspace.pool_images()) == 4
    assert workspace.git("status", "--porcelain") == ""
    assert len(_remote_objects(tmp_path / "remote")) > 12  # images, test split, seed shard


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="not empty"):
        create_labeled(tmp_path / "busy", images=[], remote_url=str(tmp_path / "r"))


def test_a_batch_is_one_commit_with_its_cursor_and_reaches_the_remote(workspace, tmp_path):
    before = _remote_objects(tmp_path / "remote")
    image = workspace.pool_images()[0]
    events = [LabelEvent(image=image, label="dog", task_id=1, annotation_id=7,
                         annotation_updated_at="2026-01-01T00:00:00.000000Z", annotator="1")]
    commits_before = int(workspace.git("rev-list", "--count", "HEAD"))
    commit = workspace.commit_labels(events, Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z"))
    workspace.push()
    assert int(workspace.git("rev-list", "--count", "HEAD")) == commits_before + 1
    assert "annotations: 7@2026-01-01T00:00:00.000000Z" in workspace.git("log", "-1", "--format=%B", commit)
    assert workspace.cursor() == Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z")
    assert len(_remote_objects(tmp_path / "remote") - before) == 1  # only the new shard
    assert labels_by_image(workspace.events())[image] == "dog"
    # images are untouched by labeling: the images directory's .dvc file did not change
    assert workspace.git("diff", "--name-only", "HEAD~1", "HEAD").split() == [
        "data/labels/.gitignore", "data/labels/batch-000001.csv.dvc", "data/labels/cursor.json",
    ] or "data/images.dvc" not in workspace.git("diff", "--name-only", "HEAD~1", "HEAD")


def test_half_written_batch_is_discarded_and_head_cursor_kept(workspace):
    shard = workspace.root / "data/labels/batch-000001.csv"
    shard.write_text("image,label\n")
    (workspace.root / "data/labels/cursor.json").write_text('{"batch": 1, "updated_at": "x"}')
    assert workspace.discard_uncommitted_labels() is True
    assert not shard.exists()
    assert workspace.cursor() == Cursor()
    assert workspace.discard_uncommitted_labels() is False


def test_remote_alone_rebuilds_the_labels(workspace, tmp_path):
    """What is pushed is enough: a fresh clone + dvc pull from the remote has every label."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(workspace.root), str(clone)], check=True)
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        with repo.config.edit("local") as conf:
            conf["core"]["site_cache_dir"] = str(clone / ".dvc" / "tmp" / "site")
        repo.pull(allow_missing=True)  # pipeline outputs do not exist before a run
    assert labels_by_image(read_events(clone / "data/labels")) == labels_by_image(workspace.events())


def test_discarding_an_interrupted_batch_keeps_every_committed_shard(workspace):
    """A crash between writing a shard and committing it: the leftovers go, the committed
    shards (DVC outputs that git ignores) stay, and a missing one is restored."""
    image = workspace.pool_images()[0]
    event = LabelEvent(image=image, label="dog", task_id=1, annotation_id=9,
                       annotation_updated_at="2026-01-02T00:00:00.000000Z")
    workspace.commit_labels([event], Cursor(batch=1, updated_at="2026-01-02T00:00:00.000000Z"))
    known_before = workspace.known_annotations()
    labels_dir = workspace.root / "data" / "labels"
    # Interrupted after `dvc add` of batch 2 (shard, .dvc file, .gitignore and cursor changed).
    half = [LabelEvent(image=image, label="cat", annotation_id=10, annotation_updated_at="x")]
    from pipelines.labels import write_shard
    write_shard(labels_dir / "batch-000002.csv", half)
    workspace.dvc_add([labels_dir.relative_to(workspace.root) / "batch-000002.csv"])
    assert workspace.discard_uncommitted_labels()
    assert not (labels_dir / "batch-000002.csv").exists() and not (labels_dir / "batch-000002.csv.dvc").exists()
    assert workspace.known_annotations() == known_before and 9 in known_before
    assert workspace.git("status", "--porcelain") == ""
    # A committed shard deleted from the working tree comes back from the DVC cache.
    (labels_dir / "batch-000001.csv").unlink()
    assert workspace.restore_label_shards() == 1
    assert workspace.known_annotations() == known_before
