"""A folder of unlabeled colour photos a tiny grayscale CNN can still learn at 8x8: three
classes by the layout of light and dark (one flat tone, two halves split horizontally,
two halves split vertically), each in random tints, with noise, of random sizes, some
JPEG and some PNG. The truth stays with the test, by file path: the folder holds no labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["PATTERNS", "write_colour_images"]

PATTERNS = ("flat", "horizontal", "vertical")


def _tone(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """An RGB colour around a grey level in [low, high], tinted by up to +-40 per channel."""
    return np.clip(rng.integers(low, high + 1) + rng.integers(-40, 41, size=3), 0, 255)


def _pixels(rng: np.random.Generator, pattern: str, width: int, height: int) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.float64)
    if pattern == "flat":
        image[:] = _tone(rng, 100, 150)
    else:
        light, dark = _tone(rng, 195, 235), _tone(rng, 20, 60)
        first, second = (light, dark) if rng.random() < 0.5 else (dark, light)
        if pattern == "horizontal":  # a horizontal edge: top half against bottom half
            image[: height // 2], image[height // 2 :] = first, second
        else:  # a vertical edge: left half against right half
            image[:, : width // 2], image[:, width // 2 :] = first, second
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_colour_images(folder: Path, n: int, *, seed: int, prefix: str = "photo",
                        sides: tuple[int, int] = (20, 60)) -> dict[str, str]:
    """`n` images under `folder` (a quarter of them in a subfolder), classes in turn; returns
    {path as written: pattern}. Sizes `sides` px per side (20-60); every other image a JPEG."""
    rng = np.random.default_rng(seed)
    truth: dict[str, str] = {}
    for i in range(n):
        pattern = PATTERNS[i % len(PATTERNS)]
        width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        image = Image.fromarray(_pixels(rng, pattern, width, height), mode="RGB")
        where = folder / "more" if i % 4 == 1 else folder
        where.mkdir(parents=True, exist_ok=True)
        if i % 2:
            path = where / f"{prefix}-{i:04d}.jpg"
            image.save(path, format="JPEG", quality=92)
        else:
            path = where / f"{prefix}-{i:04d}.png"
            image.save(path, format="PNG")
        truth[str(path)] = pattern
    return truth
