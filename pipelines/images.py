"""Image decoding and preprocessing shared by training and serving.

Serving calls exactly these functions, so a model always sees images the way it was
trained on them, and the way the annotator saw them in Label Studio (a browser applies
EXIF orientation and shows transparency on a white page). Only numpy and Pillow here:
this module must import fast.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from kernel.errors import BadInputError

__all__ = ["InputSpec", "decode_image", "preprocess", "sniff_image", "to_rgb", "MAX_IMAGE_PIXELS"]

#: Larger images are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 50_000_000

_WHITE = (255, 255, 255)
# Modes holding more than 8 bits per pixel: scaled down to 8 bits, never clipped.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class _TooLargeError(BadInputError):
    """Refused for its size; `size` ("WxH") lets `sniff_image` say so without parsing a message."""

    def __init__(self, message: str, size: str):
        super().__init__(message)
        self.size = size


def decode_image(source: bytes | Path | Image.Image) -> Image.Image:
    """Open PNG/JPEG/... bytes or a file, upright (EXIF orientation applied); raise
    `BadInputError` for anything else."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            raw = source.read_bytes() if isinstance(source, Path) else source
            if not raw:
                raise BadInputError("empty image: the body holds no bytes")
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise _TooLargeError(
                    f"image is {image.width}x{image.height}; at most {MAX_IMAGE_PIXELS} pixels",
                    f"{image.width}x{image.height}",
                )
            image.load()
        except UnidentifiedImageError as exc:
            raise BadInputError("not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP)") from exc
        except Image.DecompressionBombError as exc:
            # Pillow's own limit, checked while opening: the size is in its message only.
            raise _TooLargeError(f"image is larger than {MAX_IMAGE_PIXELS} pixels: {exc}",
                                 f"over {MAX_IMAGE_PIXELS} pixels") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadInputError(f"corrupt or truncated image: {exc}") from exc
    if image.width == 0 or image.height == 0:
        raise BadInputError("image has zero width or height")
    return _upright(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a browser shows it: upright, transparency on white, 16-bit and float
    pixels scaled (not clipped) to 0..255, CMYK/palette/greyscale converted."""
    image = _upright(image)
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    try:
        if image.mode.endswith(("A", "a")) or "transparency" in image.info:
            # Via RGBA: Pillow turns a palette or tRNS transparency into alpha only there.
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, _WHITE)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return image.convert("RGB")
    except ValueError as exc:  # a mode Pillow cannot convert (e.g. premultiplied "La")
        raise BadInputError(f"image colour mode {image.mode} is not supported: {exc}") from exc


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: size x size pixels, 1 (grey) or 3 (RGB) channels, and how an
    image of another shape is made square. Written into the model's metadata by the
    register stage, so serving prepares images exactly as training did."""

    size: int
    channels: int = 1
    resize: str = "squash"  # "squash" | "pad" | "center_crop"

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> "InputSpec":
        """A model's spec; models registered before channels and resize existed are grey, squashed."""
        return cls(int(meta["image_size"]), int(meta.get("channels", 1)), str(meta.get("resize", "squash")))


def preprocess(images: Sequence[Image.Image], spec: InputSpec | int) -> np.ndarray:
    """Decoded images -> float32 in [0, 1], shape (N, size, size, channels): upright, on
    white, RGB (`to_rgb`), then grey if the model is, then made square as `spec.resize`
    says. An int `spec` is a grey, squashed model of that size."""
    spec = spec if isinstance(spec, InputSpec) else InputSpec(int(spec))
    if spec.resize not in _RESIZERS:
        raise ValueError(f"unknown resize {spec.resize!r}: one of {', '.join(_RESIZERS)}")
    batch = np.zeros((len(images), spec.size, spec.size, spec.channels), dtype=np.float32)
    for i, image in enumerate(images):
        # Through RGB so every mode rule lives in `to_rgb`; RGB->L of a grey pixel is exact.
        pixels = to_rgb(decode_image(image))
        if spec.channels == 1:
            pixels = pixels.convert("L")
        square = _RESIZERS[spec.resize](pixels, spec.size)
        batch[i] = np.asarray(square, dtype=np.float32).reshape(spec.size, spec.size, spec.channels) / 255.0
    return batch


def _squash(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    # BOX averages whole source pixels: an upscaled starter image maps back exactly.
    return image.resize((size, size), Image.Resampling.BOX)


def _pad(image: Image.Image, size: int) -> Image.Image:
    """Fit inside size x size keeping the aspect (at least 1 pixel a side), centred on black."""
    scale = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.BOX)
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square, then to size x size."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return _squash(image.crop((left, top, left + side, top + side)), size)


_RESIZERS = {"squash": _squash, "pad": _pad, "center_crop": _center_crop}


def sniff_image(path: Path) -> str | None:
    """None when `path` is an image training can use (decoded in full, convertible to
    RGB); else a short reason to show the user for skipping it."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        to_rgb(decode_image(path))
    except _TooLargeError as exc:
        return f"too large: {exc.size}"
    except BadInputError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):
            return "not an image (no format Pillow reads: PNG, JPEG, GIF, BMP, TIFF, WebP)"
        return str(exc)  # "corrupt or truncated image: ...", "image has zero width or height"
    except OSError as exc:
        return f"unreadable file: {exc.strerror or exc}"
    return None


def _upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; `exif_transpose` drops the tag, so a second call is a no-op."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float pixels to 0..255 by their range, as viewers do.

    Unsigned 16-bit is exact (/257). "I" and "F" carry no bit depth, so it is inferred:
    the smallest usual full scale (1.0 for floats, 8 or 16 bits) that holds the values,
    else the image's own maximum; negative values shift the range to start at the minimum."""
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        return np.round(pixels / 257.0).astype(np.uint8)
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(pixels.shape, np.uint8)
    low = min(float(finite.min()), 0.0)
    high = float(finite.max())
    scales = (1.0, 255.0, 65535.0) if pixels.dtype.kind == "f" else (255.0, 65535.0)
    top = next((s for s in scales if high <= s), high)
    span = (top - low) or 1.0
    scaled = np.nan_to_num((values - low) / span * 255.0, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
