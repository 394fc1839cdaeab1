"""Stage `prepare`: fold the label shards, split them into training labels and the set that
judges the run, load images, write the arrays.

Which set judges a run (`judged_by`):
- ``test``: the user's labeled held-out test set, when the workspace has one;
- ``eval``: the annotators' labels on the evaluation sample, once it holds
  `eval.min_labels` labels and `eval.min_per_class` per class;
- ``cv``: before that, k-fold cross-validation on the training labels (`pipelines.evaluate`).
Evaluation-sample images are never training data, whichever set judges.
Open suspect labels (`pipelines.labels.held_suspects`, from the committed suspects file) are
neither training nor evaluation labels until someone reviews them.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kernel.errors import WorkspaceError
from kernel.layout import IMAGES_DIR, LABELS_DIR, PARAMS_FILE, POOL_DIR, PREPARED, TEST_IMAGES_DIR, TEST_LABELS
from pipelines.images import decode_image, preprocess
from pipelines.labels import held_suspects, labels_by_image, read_events, read_suspects
from pipelines.params import Params, load_params
from pipelines.pool import read_pool

__all__ = ["PrepareResult", "LabelSplits", "JudgedBy", "label_splits", "read_test_labels", "prepare"]

JudgedBy = Literal["test", "eval", "cv"]


@dataclass(frozen=True)
class LabelSplits:
    train: dict[str, str]  # image -> label; never an evaluation-sample image
    evaluation: dict[str, str]  # annotators' labels on the evaluation sample
    test: dict[str, str]  # the user's labeled test set (empty without one)
    judged_by: JudgedBy
    eval_ready: bool = False  # the evaluation set is large enough to judge (`eval_set_ready`)
    held_suspects: frozenset[str] = frozenset()  # open suspect labels, in neither set until reviewed

    @property
    def judge(self) -> dict[str, str]:
        return {"test": self.test, "eval": self.evaluation, "cv": self.train}[self.judged_by]


@dataclass(frozen=True)
class PrepareResult:
    n_train: int
    n_test: int
    judged_by: JudgedBy
    out: Path


def read_test_labels(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        return {row["image"]: row["label"] for row in csv.DictReader(fh)}


def eval_set_ready(params: Params, evaluation: dict[str, str], sample_size: int | None = None) -> bool:
    """`eval.min_labels` labels and `eval.min_per_class` per class. A sample smaller than
    `eval.min_labels` (a small pool) judges once all of it is labeled."""
    counts = Counter(evaluation.values())
    needed = min(params.evaluation.min_labels, sample_size) if sample_size else params.evaluation.min_labels
    return (len(evaluation) >= needed
            and all(counts[c] >= params.evaluation.min_per_class for c in params.data.classes))


def label_splits(params: Params, root: Path) -> LabelSplits:
    events = read_events(root / LABELS_DIR)
    held = held_suspects(events, read_suspects(root / LABELS_DIR), params.data.label_policy)
    labels = {k: v for k, v in labels_by_image(events, params.data.label_policy).items() if k not in held}
    eval_images = {p.name for p in read_pool(root / POOL_DIR) if p.split == "eval"}
    evaluation = {k: v for k, v in labels.items() if k in eval_images}
    train = {k: v for k, v in labels.items() if k not in eval_images}
    test = read_test_labels(root / TEST_LABELS)
    ready = bool(eval_images) and eval_set_ready(params, evaluation, len(eval_images))
    judged_by: JudgedBy = "test" if test else "eval" if ready else "cv"
    return LabelSplits(train=train, evaluation=evaluation, test=test, judged_by=judged_by, eval_ready=ready,
                       held_suspects=frozenset(held))


def _arrays(paths: dict[str, Path], labels: dict[str, str], params: Params) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(params.data.classes)}
    unknown = sorted({label for label in labels.values() if label not in index})
    if unknown:
        raise WorkspaceError(f"labels {unknown} are not among the classes in params.yaml")
    names = sorted(labels)
    missing = [n for n in names if n not in paths]
    if missing:
        raise WorkspaceError(f"{len(missing)} labeled images are not in the workspace, e.g. {missing[0]}")
    x = preprocess([decode_image(paths[name]) for name in names], params.data.input_spec)
    y = np.array([index[labels[name]] for name in names], dtype=np.int64)
    return x, y


def prepare(params: Params, root: Path, out: Path) -> PrepareResult:
    splits = label_splits(params, root)
    if not splits.train:
        raise WorkspaceError("no training labels yet: label some tasks (or seed the workspace) first")
    pool = {p.name: root / IMAGES_DIR / p.relpath for p in read_pool(root / POOL_DIR)}
    # Seed images of a workspace made before import batches lie flat in data/images/.
    pool.update({n: root / IMAGES_DIR / n for n in splits.train if n not in pool and (root / IMAGES_DIR / n).exists()})
    test_images = {name: root / TEST_IMAGES_DIR / name for name in splits.test}
    x_train, y_train = _arrays(pool, splits.train, params)
    judge = {} if splits.judged_by == "cv" else splits.judge
    x_test, y_test = _arrays(test_images if splits.judged_by == "test" else pool, judge, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        judged_by=np.array(splits.judged_by), train_images=np.array(sorted(splits.train), dtype=str),
        test_images=np.array(sorted(judge), dtype=str),
    )
    return PrepareResult(n_train=len(y_train), n_test=len(y_test), judged_by=splits.judged_by, out=out)


if __name__ == "__main__":
    result = prepare(load_params(PARAMS_FILE), Path("."), PREPARED)
    print(f"prepare: {result.n_train} training labels; judged by {result.judged_by} "
          f"({result.n_test} labeled images)" if result.judged_by != "cv" else
          f"prepare: {result.n_train} training labels; judged by cross-validation on them")
