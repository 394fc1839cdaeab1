"""Query strategies: they score model outputs, they never run the model.

Convention: a LOWER score means "label this first", so that Label Studio's queue
(uncertainty sampling serves the lowest prediction score first) and a Data Manager
tab sorted ascending both put the most informative task on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from kernel.errors import BadInputError, ConfigError

__all__ = [
    "QueryStrategy", "BatchQueryStrategy", "STRATEGY_NAMES", "Margin", "DiverseMargin", "LeastConfidence", "Entropy", "RandomSampling",
    "margin_scores", "least_confidence_scores", "entropy_scores", "get_strategy", "per_image_scores", "STRATEGIES",
    "k_center_greedy", "diverse_margin_order", "cold_start_order", "order_to_scores", "pool_order",
    "class_balanced_order",
]


def _checked(probabilities: np.ndarray) -> np.ndarray:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise BadInputError(f"probabilities must be (n_items, n_classes), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise BadInputError("probabilities contain NaN or infinite values")
    return probs


def margin_scores(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability; a single class has margin 1 (nothing to learn)."""
    probs = _checked(probabilities)
    if probs.shape[1] == 1:
        return np.ones(probs.shape[0])
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def least_confidence_scores(probabilities: np.ndarray) -> np.ndarray:
    """The top probability: the least confident prediction scores lowest."""
    return _checked(probabilities).max(axis=1)


def entropy_scores(probabilities: np.ndarray) -> np.ndarray:
    """1 - normalised entropy: the most uncertain distribution scores lowest (0 if uniform)."""
    probs = _checked(probabilities)
    if probs.shape[1] == 1:
        return np.ones(probs.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    # Clipped: float noise (1 - 1.0000000000000002) must not leave [0, 1], the range
    # Label Studio keeps prediction scores in (it silently drops others).
    return np.clip(1.0 + terms.sum(axis=1) / np.log(probs.shape[1]), 0.0, 1.0)


class QueryStrategy(Protocol):
    """Pointwise: each item's score alone (one image of the client API, one task)."""

    name: str

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        """One score per item; lower = more informative = label first."""
        ...


@runtime_checkable
class BatchQueryStrategy(QueryStrategy, Protocol):
    """Batch mode: the next `batch_size` items are chosen together, in the model's
    embedding space, when the whole pool is re-scored (the loop then asks the service for
    embeddings too). A single item still gets its pointwise `score`."""

    name: str

    def score(self, probabilities: np.ndarray) -> np.ndarray: ...

    def order(
        self, probabilities: np.ndarray, embeddings: np.ndarray, *,
        labeled_embeddings: np.ndarray | None, batch_size: int,
    ) -> np.ndarray:
        """The whole pool's ordering (indices, most useful first)."""
        ...


class _Pointwise:
    """A strategy whose score is a pure function of each item's probabilities."""

    name: str
    _scores: Callable[[np.ndarray], np.ndarray]

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return type(self)._scores(probabilities)


class Margin(_Pointwise):
    """Smallest margin between the two most likely classes first (Scheffer et al., 2001)."""

    name, _scores = "margin", staticmethod(margin_scores)


class LeastConfidence(_Pointwise):
    """Lowest top-class probability first (Lewis & Gale, 1994)."""

    name, _scores = "least_confidence", staticmethod(least_confidence_scores)


class Entropy(_Pointwise):
    """Highest predictive entropy first (Shannon entropy of the class distribution)."""

    name, _scores = "entropy", staticmethod(entropy_scores)


class RandomSampling:
    """The baseline: a uniformly random order (seeded, so a run can be repeated)."""

    name = "random"

    def __init__(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return self._rng.random(_checked(probabilities).shape[0])


class DiverseMargin(Margin):
    """Batch mode: margin within diversity (`diverse_margin_order`) when the whole pool is
    re-scored; a single image (the client API, one Label Studio task) gets its margin."""

    name = "diverse_margin"

    def order(
        self, probabilities: np.ndarray, embeddings: np.ndarray, *,
        labeled_embeddings: np.ndarray | None, batch_size: int,
    ) -> np.ndarray:
        return diverse_margin_order(probabilities, embeddings, labeled_embeddings=labeled_embeddings,
                                    batch_size=batch_size)


#: The one list of strategies: settings, the service, the loop and the benchmark read it.
#: A new strategy is a class here (pointwise `score`, plus `order` for batch mode).
STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls for cls in (Margin, DiverseMargin, LeastConfidence, Entropy, RandomSampling)
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def per_image_scores(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """The score of every strategy that says something about one image alone (what the
    client API reports as `scores`): not `random`, and not batch-mode strategies (their
    single-image score is their base strategy's)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    strategies = [get_strategy(name) for name in STRATEGY_NAMES if STRATEGIES[name] is not RandomSampling]
    return {s.name: s.score(probs) if len(probs) else np.zeros(0)
            for s in strategies if not isinstance(s, BatchQueryStrategy)}


def get_strategy(name: str, *, seed: int | None = None) -> QueryStrategy:
    """The named strategy; `seed` makes `random` repeatable (the others ignore it)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown query strategy {name!r}: set LABELLOOP_QUERY_STRATEGY to one of "
            f"{', '.join(STRATEGY_NAMES)}"
        ) from None
    return RandomSampling(seed) if cls is RandomSampling else cls()


# --- batch mode: informative AND different from each other -------------------------------
# Pointwise scores rank each task alone, so one batch can fill up with near-duplicates the
# model is equally unsure about. These pick a batch that covers the embedding space.


def _checked_features(features: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise BadInputError(f"{name} must be (n_items, n_features), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise BadInputError(f"{name} contain NaN or infinite values")
    return x


def k_center_greedy(
    features: np.ndarray, k: int, *, anchors: np.ndarray | None = None, seed: int = 0
) -> list[int]:
    """Core-set selection (Sener & Savarese, 2018): repeatedly take the item farthest from
    everything chosen so far (and from `anchors`, e.g. the labeled items). Returns `k`
    distinct indices into `features`; with no anchors the first pick is seeded-random."""
    x = _checked_features(features, "features")
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return []
    nearest = np.full(n, np.inf)
    if anchors is not None and len(anchors):
        a = _checked_features(anchors, "anchors")
        for start in range(0, len(a), 1024):  # bounded memory for big labeled sets
            d = ((x[:, None, :] - a[None, start:start + 1024, :]) ** 2).sum(-1)
            nearest = np.minimum(nearest, d.min(axis=1))
        first = int(np.argmax(nearest))
    else:
        first = int(np.random.default_rng(seed).integers(n))
    picked = [first]
    nearest = np.minimum(nearest, ((x - x[first]) ** 2).sum(1))
    nearest[first] = -1.0
    while len(picked) < k:
        nxt = int(np.argmax(nearest))
        picked.append(nxt)
        nearest = np.minimum(nearest, ((x - x[nxt]) ** 2).sum(1))
        nearest[picked] = -1.0
    return picked


def diverse_margin_order(
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    *,
    labeled_embeddings: np.ndarray | None = None,
    batch_size: int = 10,
    candidates_per_pick: int = 5,
) -> np.ndarray:
    """Margin within diversity: the `batch_size * candidates_per_pick` smallest-margin items
    are the candidates; k-center greedy (away from the labeled items and each other) picks
    the batch among them; everything else follows in margin order. Returns the full
    ordering of the pool (indices, most useful first)."""
    margins = margin_scores(probabilities)
    x = _checked_features(embeddings, "embeddings")
    if x.shape[0] != margins.shape[0]:
        raise BadInputError(f"{x.shape[0]} embeddings for {margins.shape[0]} predictions")
    by_margin = np.argsort(margins, kind="stable")
    candidates = by_margin[: max(batch_size * candidates_per_pick, batch_size)]
    picks = [int(candidates[i]) for i in k_center_greedy(x[candidates], batch_size, anchors=labeled_embeddings)]
    chosen = set(picks)
    return np.array(picks + [int(i) for i in by_margin if int(i) not in chosen], dtype=np.int64)


def cold_start_order(features: np.ndarray, *, seed: int = 0, head: int | None = None) -> np.ndarray:
    """No model yet: a diversity ordering of the pool (k-center greedy on the raw image
    features), so the first labels cover the data instead of following task ids. Only the
    first `head` items are chosen that way (the greedy costs n x head distance rows; the
    first model re-orders the pool long before annotators get further); the rest follow
    in their given order."""
    x = _checked_features(features, "features")
    n = x.shape[0]
    picked = k_center_greedy(x, n if head is None else min(head, n), seed=seed)
    chosen = set(picked)
    return np.array(picked + [i for i in range(n) if i not in chosen], dtype=np.int64)


def order_to_scores(order: np.ndarray) -> np.ndarray:
    """A per-item score from an ordering (lower = label first), for Label Studio's queue:
    the item at position r scores (r + 1) / (n + 1), inside (0, 1) as Label Studio
    requires, leaving 0 for tasks that go before everything (re-queued for review)."""
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    if sorted(order.tolist()) != list(range(n)):
        raise BadInputError("an ordering must hold every index exactly once")
    scores = np.empty(n)
    scores[order] = (np.arange(n) + 1) / (n + 1)
    return scores


def class_balanced_order(
    order: np.ndarray, predicted: np.ndarray, *, batch_size: int, labeled_counts: np.ndarray | None = None,
) -> np.ndarray:
    """`order` (indices, most useful first) re-arranged so that every batch of `batch_size`
    holds the predicted classes in turn: each batch takes the most useful remaining item of
    each class, the class with the fewest labels (`labeled_counts`, then fewest picked) first,
    until the batch is full; a class with nothing left is passed over. Uncertainty alone
    keeps serving the classes the model confuses most, and a rare class can be absent from
    batch after batch; this keeps it in every one (class-balanced selection, as in
    Aggarwal et al. 2020, "Active learning for imbalanced datasets"). Returns a full ordering."""
    order = np.asarray(order, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if predicted.ndim != 1 or len(order) != len(predicted) or sorted(order.tolist()) != list(range(len(order))):
        raise BadInputError("class_balanced_order needs an ordering of every item and one predicted class per item")
    if batch_size < 1:
        raise BadInputError(f"batch_size must be at least 1, got {batch_size}")
    n_classes = int(predicted.max()) + 1 if len(predicted) else 0
    counts = np.zeros(n_classes, dtype=np.int64)
    if labeled_counts is not None:
        given = np.asarray(labeled_counts, dtype=np.int64)[:n_classes]
        counts[: len(given)] = given
    queues = [[int(i) for i in order if predicted[i] == c][::-1] for c in range(n_classes)]  # pop() = most useful
    out: list[int] = []
    while len(out) < len(order):
        batch_end = len(out) + batch_size
        # One turn per class per round, rarest first; rounds repeat until the batch is full.
        while len(out) < min(batch_end, len(order)):
            turn = sorted((c for c in range(n_classes) if queues[c]), key=lambda c: (counts[c], c))
            for c in turn:
                if len(out) >= batch_end:
                    break
                out.append(queues[c].pop())
                counts[c] += 1
    return np.array(out, dtype=np.int64)


def pool_order(
    strategy: str,
    probabilities: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    batch_size: int = 10,
    seed: int | None = None,
    class_balance: bool = False,
    labeled_counts: np.ndarray | None = None,
) -> np.ndarray:
    """The order in which the loop queues the unlabeled pool under `strategy` (indices,
    most useful first); with `class_balance`, re-arranged by `class_balanced_order` on the
    predicted classes. The loop and the benchmarks both select with this."""
    chosen = get_strategy(strategy, seed=seed)
    if isinstance(chosen, BatchQueryStrategy):
        if embeddings is None:
            raise BadInputError(f"{strategy} selects in the embedding space: it needs the pool's embeddings")
        order = chosen.order(probabilities, embeddings, labeled_embeddings=labeled_embeddings,
                             batch_size=batch_size)
    else:
        order = np.argsort(chosen.score(probabilities), kind="stable")
    if class_balance:
        order = class_balanced_order(order, _checked(probabilities).argmax(axis=1), batch_size=batch_size,
                                     labeled_counts=labeled_counts)
    return order
