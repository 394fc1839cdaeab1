"""Image decoding and preprocessing shared by training and serving.

Serving calls exactly these functions, so a model always sees images the way it was
trained on them. Only numpy and Pillow here: this module must import fast.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kernel.errors import BadInputError

__all__ = ["decode_image", "preprocess", "MAX_IMAGE_PIXELS"]

#: Larger images are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 50_000_000


def decode_image(source: bytes | Path | Image.Image) -> Image.Image:
    """Open PNG/JPEG/... bytes or a file; raise `BadInputError` for anything else."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            raw = source.read_bytes() if isinstance(source, Path) else source
            if not raw:
                raise BadInputError("empty image: the body holds no bytes")
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise BadInputError(
                    f"image is {image.width}x{image.height}; at most {MAX_IMAGE_PIXELS} pixels"
                )
            image.load()
        except UnidentifiedImageError as exc:
            raise BadInputError("not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP)") from exc
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            raise BadInputError(f"corrupt or truncated image: {exc}") from exc
    if image.width == 0 or image.height == 0:
        raise BadInputError("image has zero width or height")
    return image


def preprocess(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """Grayscale, box-resize to size x size, scale to [0, 1]: shape (N, size, size, 1)."""
    batch = np.zeros((len(images), size, size, 1), dtype=np.float32)
    for i, image in enumerate(images):
        gray = decode_image(image).convert("L")
        if gray.size != (size, size):
            # BOX averages whole source pixels: an upscaled starter image maps back exactly.
            gray = gray.resize((size, size), Image.Resampling.BOX)
        batch[i, :, :, 0] = np.asarray(gray, dtype=np.float32) / 255.0
    return batch
