"""The data workspace: a git repo with DVC, holding immutable images and label shards.

Layout (see `kernel.layout`)::

    params.yaml  dvc.yaml  dvc.lock
    data/images/<batch>/  the images of one import batch (DVC, one output per batch)
    data/pool/<batch>.csv each image's batch and split: pool / eval / seed   (git)
    data/test/            held-out images + labels.csv, when the user has a labeled test set
    data/labels/seed.csv  import-<batch>.csv  batch-NNNNNN.csv  (DVC, label shards)
    data/labels/cursor.json                                     (git: collection cursor)

The collection cursor is committed together with the shard it describes, so a batch
and its cursor can only be saved together: a crash before the commit leaves nothing,
a crash after it leaves a complete batch that only needs `dvc push`. Imports work the
same way: one import batch (folder + pool shard + label shard) is one commit, and what a
killed import left uncommitted is discarded before the next one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kernel.errors import WorkspaceError
from kernel.layout import IMAGES_DIR, LABELS_DIR, PARAMS_FILE, POOL_DIR
from loop.imports import ImportBatch, ImportReport
from loop.ingest import FoundImage, SkippedFile
from pipelines.labels import LabelEvent, current_annotations, read_events, write_shard
from pipelines.params import Params, load_params
from pipelines.prepare import LabelSplits, label_splits
from pipelines.pool import PoolImage, next_batch_name, read_pool

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
        self._pool_cache: tuple[tuple, dict[str, PoolImage]] | None = None

    # --- adding images -----------------------------------------------------------
    def add_images(self, found: Iterable[FoundImage | SkippedFile]) -> ImportReport:
        """New images join the pool as one import batch: one commit (not pushed: the caller
        pushes), whose cost grows with the new images, not the pool. Images already in the
        pool are counted and left out; nothing new makes no commit."""
        if (self.root / f"{IMAGES_DIR}.dvc").exists():
            raise WorkspaceError(
                f"{self.root} was created by an earlier labelloop (all images in one DVC output), so images "
                "cannot be added to it; create a workspace with `labelloop init --images DIR` and add to that")
        self.discard_uncommitted_imports()
        pool = self.pool_index()
        params = self.params()
        report = ImportReport()
        batch = ImportBatch(
            self.root, next_batch_name({p.batch for p in pool.values()} | set(self._image_batches())),
            known_sha256={p.sha256 for p in pool.values()}, eval_params=params.evaluation,
            eval_held=sum(p.split == "eval" for p in pool.values()), report=report,
        )
        batch.add_found(found)
        self._checkpoint("add:images-written")
        outs = batch.finish()
        if not outs:
            shutil.rmtree(batch.images_dir, ignore_errors=True)
            report.batch = None
            return report
        self.dvc_add(outs)
        self._checkpoint("add:dvc-added")
        self.git("add", "-A", "--", str(POOL_DIR), str(IMAGES_DIR), str(LABELS_DIR))
        self.git("commit", "-q", "-m", f"images: batch {batch.batch}: {report.summary}")
        self._checkpoint("add:committed")
        report.commit = self.head()
        report.outputs = [Path(f"{out}.dvc") for out in outs]
        return report

    def _image_batches(self) -> list[str]:
        images = self.root / IMAGES_DIR
        return [p.name for p in images.iterdir() if p.is_dir()] if images.is_dir() else []

    def discard_uncommitted_imports(self) -> bool:
        """Remove what a killed `add` left before its commit: the batch folder, its `.dvc`
        file, pool shard and label shard. HEAD still says which batches exist."""
        self.clear_stale_git_lock()
        committed = set(self.git("ls-files", "--", str(IMAGES_DIR)).splitlines())
        leftovers = [b for b in self._image_batches() if f"{IMAGES_DIR}/{b}.dvc" not in committed]
        dirty = self.git("status", "--porcelain", "--", str(POOL_DIR), str(IMAGES_DIR))
        if not leftovers and not dirty:
            return False
        log.warning("discarding an interrupted image import: %s", ", ".join(leftovers) or dirty)
        for batch in leftovers:
            shutil.rmtree(self.root / IMAGES_DIR / batch, ignore_errors=True)
        self.git("reset", "-q", "--", str(POOL_DIR), str(IMAGES_DIR))
        self.git("checkout", "-q", "--", str(POOL_DIR), str(IMAGES_DIR))
        self.git("clean", "-q", "-fd", "--", str(POOL_DIR), str(IMAGES_DIR))
        self.discard_uncommitted_labels()  # the batch's label shard, if it got that far
        self._pool_cache = None
        return True

    def init_repos(self, remote_url: str) -> None:
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

    def dvc_add(self, paths: Sequence[Path]) -> None:
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

    def push(self, targets: Sequence[Path] | None = None) -> None:
        """Upload every DVC-tracked object of HEAD (or of these outputs' `.dvc` files) to
        the remote (idempotent)."""
        try:
            with self._dvc() as repo:
                repo.push(targets=[str(self.root / t) for t in targets] if targets else None)
        except Exception as exc:  # DVC raises many types; all mean "not pushed yet"
            raise WorkspaceError(f"dvc push to the remote failed: {exc}") from exc

    # --- reading -------------------------------------------------------------------
    def params(self) -> Params:
        return load_params(self.root / PARAMS_FILE)

    def classes(self) -> list[str]:
        return self.params().data.classes

    def pool_index(self) -> dict[str, PoolImage]:
        """Every image the workspace holds, by name (cached until a pool shard changes)."""
        pool_dir = self.root / POOL_DIR
        try:
            key: tuple = (pool_dir.stat().st_mtime_ns, len(os.listdir(pool_dir)))
        except FileNotFoundError:  # none yet, or a workspace made before import batches
            key = ("no pool folder",)
        if self._pool_cache is None or self._pool_cache[0] != key:
            self._pool_cache = (key, {p.name: p for p in read_pool(pool_dir)})
        return self._pool_cache[1]

    def pool_images(self) -> list[str]:
        """The images annotators label (pool and evaluation sample), in import order."""
        return [name for name, p in self.pool_index().items() if p.split != "seed"]

    def eval_images(self) -> set[str]:
        """The evaluation sample: labeled by annotators, never trained on, never queried."""
        return {name for name, p in self.pool_index().items() if p.split == "eval"}

    def image_relpath(self, name: str) -> str:
        """Where an image lies under data/images/ (its Label Studio URL path)."""
        held = self.pool_index().get(name)
        return held.relpath if held else name

    def image_path(self, name: str) -> Path:
        return self.root / IMAGES_DIR / self.image_relpath(name)

    def label_splits(self) -> LabelSplits:
        """Training labels, evaluation labels, test labels and which set judges now."""
        return label_splits(self.params(), self.root)

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
        self.dvc_add([shard])
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
