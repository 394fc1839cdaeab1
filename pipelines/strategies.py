"""Query strategies: they score model outputs, they never run the model.

Convention: a LOWER score means "label this first", so that Label Studio's queue
(uncertainty sampling serves the lowest prediction score first) and a Data Manager
tab sorted ascending both put the most informative task on top.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from loop.errors import BadInputError

__all__ = [
    "QueryStrategy", "Margin", "LeastConfidence", "Entropy", "RandomSampling",
    "margin_scores", "least_confidence_scores", "entropy_scores", "get_strategy", "STRATEGIES",
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
    return 1.0 + terms.sum(axis=1) / np.log(probs.shape[1])


class QueryStrategy(Protocol):
    name: str

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        """One score per item; lower = more informative = label first."""
        ...


class Margin:
    """Smallest margin between the two most likely classes first (Scheffer et al., 2001)."""

    name = "margin"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return margin_scores(probabilities)


class LeastConfidence:
    """Lowest top-class probability first (Lewis & Gale, 1994)."""

    name = "least_confidence"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return least_confidence_scores(probabilities)


class Entropy:
    """Highest predictive entropy first (Shannon entropy of the class distribution)."""

    name = "entropy"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return entropy_scores(probabilities)


class RandomSampling:
    """The baseline: a uniformly random order (seeded, so a run can be repeated)."""

    name = "random"

    def __init__(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return self._rng.random(_checked(probabilities).shape[0])


STRATEGIES: dict[str, type[QueryStrategy]] = {
    "margin": Margin,
    "least_confidence": LeastConfidence,
    "entropy": Entropy,
    "random": RandomSampling,
}


def get_strategy(name: str) -> QueryStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise BadInputError(
            f"unknown query strategy {name!r}; choose one of {sorted(STRATEGIES)}"
        ) from None
