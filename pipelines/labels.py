"""The label table: append-only shards of label events folded into current labels.

Images are immutable files; labels are data. Each collected batch is one CSV shard
(``data/labels/batch-000042.csv``), so adding a batch costs the batch, not the dataset.
A relabel is a later ``upsert`` of the same annotation, a deleted or skipped annotation
is a ``delete`` event: both change rows, never image files.

Policy when several annotations exist for one image: the most recently updated one
wins (``labels_by_image``).

Suspect labels (``suspects.csv`` beside the shards, in git): labels the loop found likely
wrong (`loop.quality`), one row per image, written in the data commit of the collect that
found them. Whether a suspect is still open is decided from the committed data alone
(`suspect_states`), so a training run in a clone at a data commit holds out exactly what
the loop held out then.
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
    "SUSPECTS_FILE",
    "Suspect",
    "SuspectState",
    "annotation_versions",
    "read_suspects",
    "parse_suspects",
    "write_suspects",
    "suspect_states",
    "held_suspects",
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


# --- suspect labels ------------------------------------------------------------------------
SUSPECTS_FILE = "suspects.csv"

#: open: no annotation of the image changed since it was flagged (awaiting review);
#: confirmed: reviewed, and the image's label under the policy is the suspected one again;
#: relabeled: reviewed, and the policy now gives another label; unresolved: reviewed, and
#: the policy gives no label (a majority tie, held back and re-queued as ties are).
SuspectState = Literal["open", "confirmed", "relabeled", "unresolved"]


@dataclass(frozen=True)
class Suspect:
    """A label found likely wrong, and what the image's annotations were when it was."""

    image: str
    label: str  # the label suspected wrong
    annotator: str  # who gave it
    task_id: int | None
    annotations: str  # the image's annotation versions when flagged (`annotation_versions`)
    reason: str
    hold: bool = True  # held out of training and evaluation while open
    batch: int = 0  # the label batch whose data commit flagged it


_SUSPECT_COLUMNS = [f.name for f in fields(Suspect)]


def annotation_versions(events: Iterable[LabelEvent], image: str) -> str:
    """The image's current annotations as ``key@version`` (space-separated, sorted): any
    new, updated or deleted annotation changes it, and that is what a review is."""
    return " ".join(sorted(f"{e.key}@{e.annotation_updated_at}" for e in events if e.image == image))


def parse_suspects(lines: Iterable[str]) -> list[Suspect]:
    """Suspects from the file's lines (`read_suspects`; `git show` of an older commit's)."""
    return [Suspect(image=row["image"], label=row["label"], annotator=row["annotator"],
                    task_id=int(row["task_id"]) if row["task_id"] else None,
                    annotations=row["annotations"], reason=row["reason"], hold=row["hold"] == "true",
                    batch=int(row["batch"] or 0))
            for row in csv.DictReader(lines)]


def read_suspects(labels_dir: Path) -> list[Suspect]:
    path = labels_dir / SUSPECTS_FILE
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return parse_suspects(fh)


def write_suspects(labels_dir: Path, suspects: Iterable[Suspect]) -> Path:
    path = labels_dir / SUSPECTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_SUSPECT_COLUMNS)
        writer.writeheader()
        for suspect in sorted(suspects, key=lambda s: s.image):
            row = asdict(suspect)
            row["hold"] = "true" if suspect.hold else "false"
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def suspect_states(events: Iterable[LabelEvent], suspects: Iterable[Suspect],
                   policy: LabelPolicy = "latest") -> dict[str, SuspectState]:
    """Each suspect image's state, from the label events alone (see `SuspectState`)."""
    events = list(events)
    suspects = list(suspects)
    if not suspects:
        return {}
    current = list(current_annotations(events).values())
    labels = labels_by_image(events, policy)
    by_image: dict[str, list[LabelEvent]] = defaultdict(list)
    for event in current:
        by_image[event.image].append(event)
    states: dict[str, SuspectState] = {}
    for suspect in suspects:
        if annotation_versions(by_image.get(suspect.image, []), suspect.image) == suspect.annotations:
            states[suspect.image] = "open"
        elif suspect.image not in labels:
            states[suspect.image] = "unresolved"
        else:
            states[suspect.image] = "confirmed" if labels[suspect.image] == suspect.label else "relabeled"
    return states


def held_suspects(events: Iterable[LabelEvent], suspects: Iterable[Suspect], policy: LabelPolicy = "latest") -> set[str]:
    """Images held out of training (and evaluation) now: open suspects flagged with `hold`."""
    suspects = list(suspects)
    states = suspect_states(events, suspects, policy)
    return {s.image for s in suspects if s.hold and states.get(s.image) == "open"}
