"""The data workspace: a git repo with DVC, holding immutable images and label shards.

Layout (see `kernel.layout`)::

    params.yaml  dvc.yaml  dvc.lock
    data/images/          seed + pool images            (DVC, immutable)
    data/test/            held-out images + labels.csv  (DVC, never shown to annotators)
    data/pool.csv         the images offered to annotators
    data/labels/seed.csv  data/labels/batch-NNNNNN.csv  (DVC, one shard per collected batch)
    data/labels/cursor.json                             (git: collection cursor)

The collection cursor is committed together with the shard it describes, so a batch
and its cursor can only be saved together: a crash before the commit leaves nothing,
a crash after it leaves a complete batch that only needs `dvc push`.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from kernel.errors import WorkspaceError
from loop.starter import StarterImage
from pipelines.labels import (
    SEED_SHARD,
    LabelEvent,
    current_annotations,
    read_events,
    write_shard,
)
from kernel.layout import (
    IMAGES_DIR,
    LABELS_DIR,
    PARAMS_FILE,
    POOL_FILE,
    TEST_IMAGES_DIR,
    TEST_LABELS,
)
from pipelines.params import DataParams, Params, load_params
from pipelines.stages import DVC_PIPELINE

__all__ = ["Workspace", "Cursor"]

log = logging.getLogger(__name__)

CURSOR_FILE = LABELS_DIR / "cursor.json"

@dataclass(frozen=True)
class Cursor:
    """How far collection has gone: last batch number and newest task update seen."""

    batch: int = 0
    updated_at: str | None = None


class Workspace:
    def __init__(self, root: Path, *, checkpoint: Callable[[str], None] | None = None):
        self.root = root.resolve()
        #: Crash points for the exactly-once tests (`loop.faults`); a no-op by default.
        self._checkpoint = checkpoint or (lambda point: None)

    # --- creation ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: Path,
        *,
        images: Sequence[StarterImage],
        remote_url: str,
        seed_per_class: int = 2,
        test_fraction: float = 0.25,
        image_size: int = 8,
        random_seed: int = 0,
    ) -> "Workspace":
        root = root.resolve()
        if (root / ".git").exists() or (root / ".dvc").exists():
            raise WorkspaceError(f"{root} already holds a repository; choose an empty directory")
        if root.exists() and any(root.iterdir()):
            raise WorkspaceError(f"{root} is not empty; choose an empty directory")
        if not 0 < test_fraction < 1:
            raise WorkspaceError("test_fraction must be between 0 and 1")
        classes = sorted({image.label for image in images}, key=_class_sort_key)
        if len(classes) < 2:
            raise WorkspaceError("a classifier needs at least two classes of images")
        root.mkdir(parents=True, exist_ok=True)
        ws = cls(root)
        test, seed, pool = _split(images, classes, seed_per_class, test_fraction, random_seed)
        ws._write_dataset(test, seed, pool)
        Params(data=DataParams(classes=classes, image_size=image_size)).dump(root / PARAMS_FILE)
        (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_PIPELINE, sort_keys=False))
        (root / ".gitignore").write_text("/build/\n/plots/\n")
        _write_json(root / CURSOR_FILE, Cursor().__dict__)
        ws._init_repos(remote_url)
        ws._dvc_add([IMAGES_DIR, Path("data/test"), LABELS_DIR / SEED_SHARD])
        ws.git("add", "-A")
        ws.git(
            "commit", "-q", "-m",
            f"labelloop init: {len(seed)} seed labels, {len(pool)} pool images, "
            f"{len(test)} held-out test images",
        )
        ws.push()
        return ws

    def _write_dataset(self, test, seed, pool) -> None:
        for directory, items in ((IMAGES_DIR, seed + pool), (TEST_IMAGES_DIR, test)):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
            for item in items:
                (self.root / directory / item.name).write_bytes(item.png)
        with (self.root / TEST_LABELS).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "label"])
            writer.writerows((item.name, item.label) for item in test)
        with (self.root / POOL_FILE).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image"])
            writer.writerows((item.name,) for item in pool)
        write_shard(
            self.root / LABELS_DIR / SEED_SHARD,
            (LabelEvent(image=item.name, label=item.label, annotator="seed") for item in seed),
        )

    def _init_repos(self, remote_url: str) -> None:
        from dvc.repo import Repo

        self.git("init", "-q", "-b", "main")
        self.git("config", "user.name", "labelloop")
        self.git("config", "user.email", "labelloop@localhost")
        init_log = logging.getLogger("dvc.repo.init")  # "Initialized DVC repository" noise
        level = init_log.level
        init_log.setLevel(logging.WARNING)
        try:
            Repo.init(str(self.root))
        finally:
            init_log.setLevel(level)
        with self._dvc() as repo:
            with repo.config.edit() as conf:
                conf["remote"]["storage"] = {"url": remote_url}
                conf["core"]["remote"] = "storage"
                conf["core"]["autostage"] = True
        self.configure_local_dvc()

    def configure_local_dvc(self, cache_dir: Path | None = None) -> None:
        """Machine-local DVC settings: keep DVC's index inside the workspace, optional shared cache."""
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            with repo.config.edit("local") as conf:
                conf["core"]["site_cache_dir"] = str(self.root / ".dvc" / "tmp" / "site-cache")
                if cache_dir is not None:
                    conf["cache"]["dir"] = str(cache_dir)

    # --- plumbing ------------------------------------------------------------------
    def _dvc(self):
        from dvc.repo import Repo

        if not (self.root / ".dvc").is_dir():
            raise WorkspaceError(f"{self.root} is not a labelloop workspace; run `labelloop init` first")
        # A fresh Repo per operation: an open one goes stale when the cache changes under it.
        return Repo(str(self.root))

    def _dvc_add(self, paths: Sequence[Path]) -> None:
        from dvc.exceptions import DvcException

        try:
            with self._dvc() as repo:
                repo.add([str(self.root / p) for p in paths])
        except DvcException as exc:
            raise WorkspaceError(f"dvc add in {self.root} failed: {exc}; fix the cause "
                                 "(disk space, permissions) and collect again") from exc

    def git(self, *args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=self.root, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise WorkspaceError(f"git {' '.join(args)} failed in {self.root}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def exists(self) -> bool:
        return (self.root / ".git").is_dir() and (self.root / ".dvc").is_dir()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def push(self) -> None:
        """Upload every DVC-tracked object of HEAD to the remote (idempotent)."""
        try:
            with self._dvc() as repo:
                repo.push()
        except Exception as exc:  # DVC raises many types; all mean "not pushed yet"
            raise WorkspaceError(f"dvc push to the remote failed: {exc}") from exc

    # --- reading -------------------------------------------------------------------
    def params(self) -> Params:
        return load_params(self.root / PARAMS_FILE)

    def classes(self) -> list[str]:
        return self.params().data.classes

    def pool_images(self) -> list[str]:
        with (self.root / POOL_FILE).open(newline="") as fh:
            return [row["image"] for row in csv.DictReader(fh)]

    def image_path(self, name: str) -> Path:
        return self.root / IMAGES_DIR / name

    def events(self) -> list[LabelEvent]:
        return read_events(self.root / LABELS_DIR)

    def cursor(self) -> Cursor:
        path = self.root / CURSOR_FILE
        return Cursor(**json.loads(path.read_text())) if path.exists() else Cursor()

    def known_annotations(self) -> dict[int, LabelEvent]:
        """Annotations whose current version is recorded, by annotation id."""
        return {
            e.annotation_id: e
            for e in current_annotations(self.events()).values()
            if e.annotation_id is not None
        }

    def annotations_by_task(self) -> dict[int, set[int]]:
        by_task: dict[int, set[int]] = defaultdict(set)
        for annotation_id, event in self.known_annotations().items():
            if event.task_id is not None:
                by_task[event.task_id].add(annotation_id)
        return by_task

    def labels_in_batches_after(self, batch: int) -> int:
        """Label events collected in batches numbered above `batch`."""
        total = 0
        for path in sorted((self.root / LABELS_DIR).glob("batch-*.csv")):
            if int(path.stem.split("-")[1]) > batch:
                with path.open() as fh:
                    total += max(sum(1 for _ in fh) - 1, 0)
        return total

    # --- writing -------------------------------------------------------------------
    def clear_stale_git_lock(self, min_age_s: float = 30.0) -> bool:
        """Remove `.git/index.lock` left by a git process that was killed. Only one loop
        works on a workspace (the workspace file lock, the scheduler lease), so a lock
        older than `min_age_s` has no owner left."""
        lock = self.root / ".git" / "index.lock"
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age < min_age_s:
            raise WorkspaceError(f"{lock} is {age:.0f}s old: another git process is working here")
        log.warning("removing a stale git lock (%s, %.0fs old) left by a killed process", lock, age)
        lock.unlink(missing_ok=True)
        return True

    def discard_uncommitted_labels(self) -> bool:
        """Drop label files a crash left half-written; HEAD's cursor still says where to resume."""
        self.clear_stale_git_lock()
        dirty = self.git("status", "--porcelain", "--", str(LABELS_DIR))
        if not dirty:
            return False
        log.warning("discarding uncommitted label files left by an interrupted collect:\n%s", dirty)
        self.git("reset", "-q", "--", str(LABELS_DIR))
        self.git("checkout", "-q", "--", str(LABELS_DIR))
        # Not -x: the committed shards are DVC outputs that git ignores; only the new,
        # uncommitted files (unignored again once .gitignore is restored) may go.
        self.git("clean", "-q", "-fd", "--", str(LABELS_DIR))
        self.restore_label_shards()
        return True

    def restore_label_shards(self) -> int:
        """Check out any committed shard missing from the working tree (from the DVC cache,
        else the remote): the labels the loop compares against must be complete."""
        missing = [d for d in (self.root / LABELS_DIR).glob("*.csv.dvc") if not d.with_suffix("").exists()]
        if missing:
            log.warning("restoring %d label shard(s) missing from the workspace", len(missing))
            with self._dvc() as repo:
                try:
                    repo.checkout(targets=[str(d) for d in missing])
                except Exception:  # not in the local cache: fetch from the remote
                    repo.pull(targets=[str(d) for d in missing])
        return len(missing)

    def commit_labels(self, events: Sequence[LabelEvent], cursor: Cursor) -> str:
        """Write one shard + its cursor, `dvc add` the shard, one git commit. Returns the commit."""
        shard = LABELS_DIR / f"batch-{cursor.batch:06d}.csv"
        write_shard(self.root / shard, events)
        self._checkpoint("commit:shard-written")
        _write_json(self.root / CURSOR_FILE, cursor.__dict__)
        self._checkpoint("commit:cursor-written")
        self._dvc_add([shard])
        self._checkpoint("commit:dvc-added")
        self.git("add", "-A", "--", str(LABELS_DIR))
        self._checkpoint("commit:git-added")
        # The commit names every annotation version it holds (id@updated_at, or id:deleted):
        # `git log` answers "which commit brought annotation 42 v3" without reading shards.
        versions = sorted(
            f"{e.annotation_id}@{e.annotation_updated_at}" if e.op == "upsert" else f"{e.annotation_id}:deleted"
            for e in events if e.annotation_id is not None
        )
        upserts = sum(e.op == "upsert" for e in events)
        message = (
            f"labels: batch {cursor.batch}: {upserts} upserts, {len(events) - upserts} deletes\n\n"
            f"annotations: {' '.join(versions)}\n"
        )
        self.git("commit", "-q", "-m", message)
        self._checkpoint("commit:committed")
        return self.head()


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


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
