"""Writing one import batch into a workspace tree: images copied one at a time into
``data/images/<batch>/`` under their content names, one pool shard, and the labels the
user already had as one label shard. The caller (`Workspace`) `dvc add`s and commits what
`ImportBatch.finish` returns, so a batch is one commit or nothing."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kernel.layout import IMAGES_DIR, LABELS_DIR, POOL_DIR
from loop.ingest import FoundImage, SkippedFile
from pipelines.labels import IMPORT_PREFIX, LabelEvent, write_shard
from pipelines.params import EvalParams
from pipelines.pool import PoolImage, Split, in_eval_sample, write_pool_shard

__all__ = ["ImportReport", "ImportBatch"]


@dataclass
class ImportReport:
    """What an `init --images` or an `add` did (printed by the CLI, returned by `Loop.add`)."""

    batch: str | None = None
    added: int = 0  # new images in the pool
    evaluation: int = 0  # of which reserved for the evaluation set
    labeled: int = 0  # of which came with a label the user already had
    already_in_pool: int = 0  # same content as an image the workspace holds
    duplicates: int = 0  # the same content twice in what was scanned
    skipped: list[SkippedFile] = field(default_factory=list)  # unreadable, with the reason
    commit: str | None = None
    outputs: list[Path] = field(default_factory=list)  # the commit's new `.dvc` files (a push of only them)
    tasks_imported: int = 0  # new Label Studio tasks
    queued: int = 0  # tasks given a queue position (scored or cold start)
    model: str | None = None  # `init`: the model family chosen for these images, and why

    @property
    def summary(self) -> str:
        return (f"{self.added} new images ({self.evaluation} for evaluation, {self.labeled} labeled), "
                f"{self.already_in_pool} already in the pool, {self.duplicates} duplicates, "
                f"{len(self.skipped)} skipped")


class ImportBatch:
    """One batch being written. Dedups by content against `known_sha256` and within itself;
    reserves a seeded uniform share of unlabeled images for evaluation up to `max_images`."""

    def __init__(self, root: Path, batch: str, *, known_sha256: set[str], eval_params: EvalParams,
                 eval_held: int, report: ImportReport):
        self.root, self.batch = root, batch
        self.images_dir = root / IMAGES_DIR / batch
        self._known = known_sha256
        self._eval, self._eval_held = eval_params, eval_held
        self._rows: list[PoolImage] = []
        self._labels: list[LabelEvent] = []
        self.report = report
        report.batch = batch

    def add_found(self, items: Iterable[FoundImage | SkippedFile]) -> None:
        for item in items:
            if isinstance(item, SkippedFile):
                if item.duplicate:
                    self.report.duplicates += 1
                else:
                    self.report.skipped.append(item)
                continue
            self._add(item.name, item.sha256, item.label, item.where,
                      copy=lambda dest, src=item.source: shutil.copyfile(src, dest),
                      eval_eligible=item.eval_eligible)

    def add_bytes(self, name: str, sha256: str, data: bytes, *, split: Split, label: str | None = None) -> None:
        """A starter image with its split decided by the caller (seed/pool)."""
        self._add(name, sha256, label, "", copy=lambda dest: dest.write_bytes(data), split=split)

    def _add(self, name: str, sha256: str, label: str | None, source: str, *, copy, split: Split | None = None,
             eval_eligible: bool = True) -> None:
        if sha256 in self._known:
            self.report.already_in_pool += 1
            return
        self._known.add(sha256)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        copy(self.images_dir / name)
        if split is None:
            # The user's own labels stay training labels; the sample comes from unlabeled images.
            wanted = label is None and eval_eligible and in_eval_sample(sha256, self._eval.fraction, self._eval.seed)
            split = "eval" if wanted and self._eval_held < self._eval.max_images else "pool"
        if split == "eval":
            self._eval_held += 1
            self.report.evaluation += 1
        if label is not None:
            self._labels.append(LabelEvent(image=name, label=label, annotator="import"))
            self.report.labeled += 1
        self._rows.append(PoolImage(name=name, batch=self.batch, split=split, sha256=sha256, source=source))
        self.report.added += 1

    def finish(self, *, seed_shard: str | None = None) -> list[Path]:
        """Write the pool shard and the label shard; returns the paths to `dvc add` (the
        image folder, the label shard), relative to the root. Nothing new: []."""
        if not self._rows:
            return []
        write_pool_shard(self.root / POOL_DIR / f"{self.batch}.csv", self._rows)
        outs = [IMAGES_DIR / self.batch]
        if self._labels:
            shard = LABELS_DIR / (seed_shard or f"{IMPORT_PREFIX}{self.batch}.csv")
            write_shard(self.root / shard, self._labels)
            outs.append(shard)
        return outs
