"""The label table: append-only shards of label events folded into current labels.

Images are immutable files; labels are data. Each collected batch is one CSV shard
(``data/labels/batch-000042.csv``), so adding a batch costs the batch, not the dataset.
A relabel is a later ``upsert`` of the same annotation, a deleted or skipped annotation
is a ``delete`` event: both change rows, never image files.

Policy when several annotations exist for one image: the most recently updated one
wins (``labels_by_image``).
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from pipelines.pool import batch_sort_key

__all__ = [
    "LabelEvent",
    "SEED_SHARD",
    "IMPORT_PREFIX",
    "read_shard",
    "write_shard",
    "read_events",
    "shard_paths",
    "current_annotations",
    "labels_by_image",
    "held_back",
    "LabelPolicy",
]

SEED_SHARD = "seed.csv"
#: Labels the user already had when images were imported (`init --images`, `add`): one
#: shard per import batch, ``import-<batch>.csv``.
IMPORT_PREFIX = "import-"
BATCH_PREFIX = "batch-"


@dataclass(frozen=True)
class LabelEvent:
    image: str
    label: str
    op: Literal["upsert", "delete"] = "upsert"
    task_id: int | None = None
    annotation_id: int | None = None
    annotation_updated_at: str = ""
    annotator: str = ""

    @property
    def key(self) -> str:
        """Identity of the label this event sets: one annotation, or one seed image."""
        if self.annotation_id is not None:
            return f"annotation:{self.annotation_id}"
        return f"seed:{self.image}"


_COLUMNS = [f.name for f in fields(LabelEvent)]


def _parse_row(row: dict[str, str]) -> LabelEvent:
    return LabelEvent(
        image=row["image"],
        label=row["label"],
        op="delete" if row["op"] == "delete" else "upsert",
        task_id=int(row["task_id"]) if row["task_id"] else None,
        annotation_id=int(row["annotation_id"]) if row["annotation_id"] else None,
        annotation_updated_at=row["annotation_updated_at"],
        annotator=row["annotator"],
    )


def read_shard(path: Path) -> list[LabelEvent]:
    with path.open(newline="") as fh:
        return [_parse_row(row) for row in csv.DictReader(fh)]


def write_shard(path: Path, events: Iterable[LabelEvent]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS)
        writer.writeheader()
        for event in events:
            row = asdict(event)
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
            count += 1
    return count


def shard_paths(labels_dir: Path) -> list[Path]:
    """Seed first, then imported labels in import order, then batches in collection order."""
    imports = sorted(labels_dir.glob(f"{IMPORT_PREFIX}*.csv"),
                     key=lambda p: batch_sort_key(p.stem[len(IMPORT_PREFIX):]))
    shards = sorted(labels_dir.glob(f"{BATCH_PREFIX}*.csv"))
    seed = labels_dir / SEED_SHARD
    return ([seed] if seed.exists() else []) + imports + shards


def read_events(labels_dir: Path) -> list[LabelEvent]:
    return [event for path in shard_paths(labels_dir) for event in read_shard(path)]


def current_annotations(events: Iterable[LabelEvent]) -> dict[str, LabelEvent]:
    """Fold events in order: the last event of each key wins; a delete removes the key."""
    state: dict[str, LabelEvent] = {}
    for event in events:
        if event.op == "delete":
            state.pop(event.key, None)
        else:
            state[event.key] = event
    return state


LabelPolicy = Literal["latest", "majority"]


def labels_by_image(events: Iterable[LabelEvent], policy: LabelPolicy = "latest") -> dict[str, str]:
    """Current label of every labeled image, when several annotators labeled it:

    - ``latest``: the most recently updated annotation wins;
    - ``majority``: the label most annotations agree on; a tie is held back (the image is
      left out of training until someone breaks it; `held_back` lists them).
    """
    current = list(current_annotations(events).values())
    if policy == "majority":
        votes: dict[str, Counter[str]] = defaultdict(Counter)
        for event in current:
            votes[event.image][event.label] += 1
        out = {}
        for image, counts in votes.items():
            (top, n), *rest = counts.most_common()
            if not rest or rest[0][1] < n:
                out[image] = top
        return dict(sorted(out.items()))
    chosen: dict[str, LabelEvent] = {}
    for event in current:
        held = chosen.get(event.image)
        if held is None or event.annotation_updated_at >= held.annotation_updated_at:
            chosen[event.image] = event
    return {image: event.label for image, event in sorted(chosen.items())}


def held_back(events: Iterable[LabelEvent], policy: LabelPolicy = "latest") -> list[str]:
    """Images with annotations but no label under `policy` (majority ties: for review)."""
    events = list(events)
    labeled = labels_by_image(events, policy)
    return sorted({e.image for e in current_annotations(events).values()} - set(labeled))
