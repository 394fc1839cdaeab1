"""A simulated annotator's mistakes (the demo, the tests and the benchmarks): a given rate of
wrong answers, either uniform over the other classes or between classes people confuse.

Each answer is decided by the annotator's seed and the image alone, not by the order images
come in: the same annotator always gets the same image wrong the same way (so a queue that
serves images in another order meets the same mistakes), and two annotators with different
seeds make independent mistakes (a reviewer)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AnnotatorNoise", "DIGIT_CONFUSIONS", "NoiseKind"]

NoiseKind = Literal["uniform", "confusing"]

#: Digits people (and classifiers) mix up: each maps to the digit it is taken for.
DIGIT_CONFUSIONS: Mapping[str, str] = {"1": "7", "7": "1", "3": "8", "8": "3", "4": "9", "9": "4"}


@dataclass(frozen=True)
class AnnotatorNoise:
    """Wrong answers at `rate`. `uniform`: a wrong answer is any other class, equally likely;
    `confusing`: the class `confusions` pairs it with (a class with no partner falls back to
    uniform). Seeded: `answer` is a pure function of (seed, image, truth)."""

    rate: float
    kind: NoiseKind = "uniform"
    seed: int = 0
    confusions: Mapping[str, str] = field(default_factory=lambda: dict(DIGIT_CONFUSIONS))

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"a noise rate is a share of answers in [0, 1], got {self.rate}")

    def answer(self, image: str, truth: str, classes: Sequence[str]) -> str:
        """What this annotator answers for `image` whose true class is `truth`."""
        rng = random.Random(f"{self.seed}/{image}")  # str seeds hash with SHA-512: stable across runs
        if rng.random() >= self.rate:
            return truth
        if self.kind == "confusing" and self.confusions.get(truth) in classes:
            return self.confusions[truth]
        others = [c for c in classes if c != truth]
        return rng.choice(others) if others else truth

    def is_wrong(self, image: str, truth: str, classes: Sequence[str]) -> bool:
        return self.answer(image, truth, classes) != truth
