"""Starter datasets: scikit-learn's digits (bundled, no download) and `<class>/*.png` folders."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kernel.errors import ConfigError

__all__ = ["StarterImage", "digits_images", "digits_truth", "folder_images", "DIGITS_SCALE"]

#: Digits are 8x8; written 4x larger so annotators can see them. Preprocessing box-resizes back.
DIGITS_SCALE = 4
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class StarterImage:
    name: str
    label: str
    png: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()


def _digit_name(index: int) -> str:
    return f"digit-{index:04d}.png"


def _png(pixels: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def digits_images() -> list[StarterImage]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        gray = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        big = np.kron(gray, np.ones((DIGITS_SCALE, DIGITS_SCALE), dtype=np.uint8))
        images.append(StarterImage(_digit_name(index), str(int(target)), _png(big)))
    return images


def digits_truth() -> dict[str, str]:
    """Ground truth by image name: what the simulated annotator answers."""
    from sklearn.datasets import load_digits

    targets = load_digits().target
    return {_digit_name(i): str(int(t)) for i, t in enumerate(targets)}


def folder_images(root: Path) -> list[StarterImage]:
    """Import `<class>/*.png` folders; names are content hashes (immutable, deduplicated)."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory of <class>/ image folders")
    images: dict[str, StarterImage] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            raw = path.read_bytes()
            name = hashlib.sha256(raw).hexdigest()[:20] + path.suffix.lower()
            images[name] = StarterImage(name, class_dir.name, raw)
    if not images:
        raise ConfigError(f"no images found under {root}/<class>/")
    return list(images.values())
