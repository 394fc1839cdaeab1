"""Query strategies: they score model outputs, they never run the model.

Convention: a LOWER score means "label this first", so that Label Studio's queue
(uncertainty sampling serves the lowest prediction score first) and a Data Manager
tab sorted ascending both put the most informative task on top.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from loop.errors import BadInputError

__all__ = ["QueryStrategy", "Margin", "margin_scores", "get_strategy", "STRATEGIES"]


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


STRATEGIES: dict[str, type[QueryStrategy]] = {"margin": Margin}


def get_strategy(name: str) -> QueryStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise BadInputError(
            f"unknown query strategy {name!r}; choose one of {sorted(STRATEGIES)}"
        ) from None
