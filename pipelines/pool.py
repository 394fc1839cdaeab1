"""The image pool: which images the workspace holds, in which import batch, and what each
is for. One CSV shard per import batch (``data/pool/init.csv``, ``data/pool/add-000001.csv``)
next to the batch's image folder (``data/images/<batch>/``), so adding images writes only
the new ones, and a shard is never rewritten.

Splits: ``pool`` (annotators label it; query strategies choose from it), ``eval`` (the
evaluation sample: annotators label it too, it is never trained on and never chosen by a
strategy) and ``seed`` (labeled by the user at import, not shown to annotators).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

__all__ = [
    "PoolImage", "Split", "INIT_BATCH", "read_pool", "write_pool_shard", "batch_sort_key",
    "next_batch_name", "in_eval_sample", "eval_order_key",
]

Split = Literal["pool", "eval", "seed"]
INIT_BATCH = "init"
ADD_PREFIX = "add-"


@dataclass(frozen=True)
class PoolImage:
    name: str  # the image's name in labels, tasks and Label Studio: unique, immutable
    batch: str  # the import batch (folder under data/images/)
    split: Split
    sha256: str
    source: str = ""  # where it came from (the user's file), for people reading the shard

    @property
    def relpath(self) -> str:
        """Path under data/images/ (flat in a workspace made before import batches)."""
        return f"{self.batch}/{self.name}" if self.batch else self.name


_COLUMNS = [f.name for f in fields(PoolImage)]


def batch_sort_key(batch: str) -> tuple[int, str]:
    return (0, "") if batch == INIT_BATCH else (1, batch)


def next_batch_name(existing: Iterable[str]) -> str:
    numbers = [int(b[len(ADD_PREFIX):]) for b in existing if b.startswith(ADD_PREFIX) and b[len(ADD_PREFIX):].isdigit()]
    return f"{ADD_PREFIX}{max(numbers, default=0) + 1:06d}"


#: Before import batches: one `data/pool.csv` of unlabeled images, all images flat in data/images/.
LEGACY_POOL_FILE = "pool.csv"


def read_pool(pool_dir: Path) -> list[PoolImage]:
    """Every image of every committed shard, batches in import order, rows in file order."""
    legacy = pool_dir.parent / LEGACY_POOL_FILE
    if not pool_dir.is_dir() and legacy.exists():
        with legacy.open(newline="", encoding="utf-8") as fh:
            return [PoolImage(name=row["image"], batch="", split="pool", sha256="") for row in csv.DictReader(fh)]
    out: list[PoolImage] = []
    shards = sorted(pool_dir.glob("*.csv"), key=lambda p: batch_sort_key(p.stem)) if pool_dir.is_dir() else []
    for shard in shards:
        with shard.open(newline="", encoding="utf-8") as fh:
            out += [PoolImage(**{k: row.get(k, "") for k in _COLUMNS}) for row in csv.DictReader(fh)]  # type: ignore[arg-type]
    return out


def write_pool_shard(path: Path, rows: Iterable[PoolImage]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
            count += 1
    return count


def in_eval_sample(sha256: str, fraction: float, seed: int) -> bool:
    """A seeded uniform draw per image, from its content: the same image always gets the
    same answer, whatever order or batch it arrives in."""
    if fraction <= 0:
        return False
    draw = int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:16], 16) / 2**64
    return draw < fraction


def eval_order_key(name: str, seed: int) -> str:
    """Where an evaluation image comes in the queue: a seeded uniform order that is a
    property of the image, so whatever remains unlabeled stays a uniform sample."""
    return hashlib.sha256(f"{seed}:order:{name}".encode()).hexdigest()
