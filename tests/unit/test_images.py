import io

import numpy as np
import pytest
from PIL import ExifTags, Image

from kernel.errors import BadInputError
from loop.starter import DIGITS_SCALE, digits_images
from pipelines.images import InputSpec, decode_image, preprocess, sniff_image, to_rgb
from tests.helpers.images import png_with_header


def test_starter_png_maps_back_to_the_8x8_digit_exactly():
    from sklearn.datasets import load_digits

    first = digits_images()[0]
    image = decode_image(first.png)
    assert image.size == (8 * DIGITS_SCALE, 8 * DIGITS_SCALE)
    x = preprocess([image], 8)
    expected = np.round(load_digits().images[0] * 255 / 16) / 255
    np.testing.assert_allclose(x[0, :, :, 0], expected, atol=1e-6)


def test_colour_jpeg_of_any_size_becomes_model_input():
    buf = io.BytesIO()
    Image.new("RGB", (123, 45), (255, 0, 0)).save(buf, format="JPEG")
    x = preprocess([decode_image(buf.getvalue())], 8)
    assert x.shape == (1, 8, 8, 1) and 0 <= x.min() <= x.max() <= 1


@pytest.mark.parametrize("payload, message", [(b"", "empty"), (b"not an image", "not an image")])
def test_bad_bytes_are_a_clear_error(payload, message):
    with pytest.raises(BadInputError, match=message):
        decode_image(payload)


# --- robust decoding: what a browser (and so the annotator) shows is what the model sees ---

def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_exif_orientation_6_is_applied_like_a_browser():
    # Stored 64x32 with a black square top-left; orientation 6 means "rotate 90 degrees
    # clockwise to display", so a browser shows 32x64 with the square top-right.
    stored = Image.new("L", (64, 32), 255)
    stored.paste(0, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    image = decode_image(_encoded(stored, "JPEG", exif=exif, quality=95))
    assert image.size == (32, 64)
    assert image.getpixel((24, 8)) < 40 and image.getpixel((8, 8)) > 215
    assert image.getpixel((24, 56)) > 215  # the stored top-right corner is now bottom-right
    assert to_rgb(image).size == (32, 64)  # applied once, not twice


@pytest.mark.parametrize("pixels, expected", [
    (np.full((8, 8), 30000, np.uint16), 30000 / 65535),  # 16-bit PNG, mode I;16
    (np.full((8, 8), 30000, np.int32), 30000 / 65535),  # mode I from a 16-bit source
    (np.full((8, 8), 0.45, np.float32), 0.45),  # mode F in [0, 1]
])
def test_wide_pixels_are_scaled_not_clipped_to_white(pixels, expected):
    image = decode_image(_encoded(Image.fromarray(pixels), "PNG")) if pixels.dtype == np.uint16 \
        else Image.fromarray(pixels)
    x = preprocess([image], 8)
    np.testing.assert_allclose(x, expected, atol=1 / 255)
    assert to_rgb(image).mode == "RGB"


def test_16_bit_png_is_mid_grey_where_pillow_convert_gives_white():
    image = decode_image(_encoded(Image.fromarray(np.full((8, 8), 30000, np.uint16)), "PNG"))
    assert image.mode == "I;16"
    assert image.convert("L").getpixel((0, 0)) == 255  # why to_rgb does not use convert("L")
    assert 0.44 < preprocess([image], 8).mean() < 0.47


def test_cmyk_jpeg_decodes_through_rgb():
    raw = _encoded(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    image = decode_image(raw)
    assert image.mode == "CMYK"
    r, g, b = to_rgb(image).getpixel((8, 8))
    assert r < 20 and g > 235 and b > 235  # pure cyan


def test_transparent_background_is_composited_on_white():
    drawing = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent *black*
    drawing.paste((0, 0, 0, 255), (4, 4, 12, 12))
    x = preprocess([decode_image(_encoded(drawing, "PNG"))], 16)[0, :, :, 0]
    assert x[0, 0] == 1.0 and x[8, 8] == 0.0
    assert decode_image(_encoded(drawing.convert("LA"), "PNG")).mode == "LA"
    assert preprocess([decode_image(_encoded(drawing.convert("LA"), "PNG"))], 16)[0, 0, 0, 0] == 1.0


def test_palette_gif_with_transparency():
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    palette.paste(1, (4, 4, 12, 12))
    image = decode_image(_encoded(palette, "GIF", transparency=0))
    assert image.mode == "P" and "transparency" in image.info
    rgb = to_rgb(image)
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((8, 8)) == (255, 0, 0)


def test_sniff_image_gives_a_reason_per_bad_file(tmp_path):
    files = {
        "empty.png": b"",
        "notes.png": b"these are my notes, not a picture\n",
        "truncated.png": _encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)),
                                  "PNG")[:3000],
        "huge.png": png_with_header(8000, 8000),
        "bomb.png": png_with_header(20000, 20000),
        "good.webp": _encoded(Image.new("RGB", (5, 7), (1, 2, 3)), "WEBP"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: sniff_image(tmp_path / name) for name in files}
    assert reasons["empty.png"] == "zero-byte file"
    assert reasons["notes.png"].startswith("not an image (")
    assert reasons["truncated.png"].startswith("corrupt or truncated image: ")
    assert reasons["huge.png"] == "too large: 8000x8000"
    assert reasons["bomb.png"].startswith("too large: ")
    assert reasons["good.webp"] is None
    assert sniff_image(tmp_path / "missing.png").startswith("unreadable file")


def test_too_large_and_unreadable_keep_their_request_messages():
    with pytest.raises(BadInputError, match="pixels"):
        decode_image(png_with_header(8000, 8000))
    with pytest.raises(BadInputError, match="pixels"):
        decode_image(png_with_header(20000, 20000))


# --- the model's input from params: channels and resize (issue 15) -------------------------


def _rgb(width: int, height: int, colour=(200, 40, 10)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def test_rgb_models_keep_colour_and_grey_models_average_it():
    image = _rgb(20, 20)
    colour = preprocess([image], InputSpec(8, 3, "squash"))
    assert colour.shape == (1, 8, 8, 3) and np.allclose(colour[0, 0, 0], np.array([200, 40, 10]) / 255)
    grey = preprocess([image], InputSpec(8, 1, "squash"))
    assert grey.shape == (1, 8, 8, 1) and np.allclose(grey[0, 0, 0, 0], round(0.299 * 200 + 0.587 * 40 + 0.114 * 10) / 255)
    # A grey image to an RGB model: three equal channels; an int spec is the grey squashed model.
    g = preprocess([Image.new("L", (9, 9), 77)], InputSpec(4, 3))
    assert np.allclose(g[..., 0], g[..., 1]) and np.allclose(g[..., 1], g[..., 2]) and np.allclose(g, 77 / 255)
    assert preprocess([image], 8).shape == (1, 8, 8, 1)


@pytest.mark.parametrize("resize", ["squash", "pad", "center_crop"])
@pytest.mark.parametrize("size", [(1, 1), (1000, 1), (1, 1000), (3, 7), (640, 480)])
def test_every_shape_becomes_the_models_square(resize, size):
    """Smaller than the input, 1x1, extreme aspect ratios, larger: always (N, s, s, c), finite,
    in [0, 1]."""
    batch = preprocess([_rgb(*size)], InputSpec(16, 3, resize))
    assert batch.shape == (1, 16, 16, 3) and np.isfinite(batch).all() and 0 <= batch.min() <= batch.max() <= 1


def test_pad_keeps_the_aspect_on_black_and_center_crop_keeps_the_middle():
    wide = Image.new("RGB", (40, 10), (255, 255, 255))
    padded = preprocess([wide], InputSpec(8, 1, "pad"))[0, :, :, 0]
    assert padded[0].max() == 0 and padded[-1].max() == 0 and padded[4].min() == 1.0  # bands above and below
    striped = Image.new("RGB", (30, 10), (0, 0, 0))
    striped.paste((255, 255, 255), (10, 0, 20, 10))  # white only in the middle third
    assert preprocess([striped], InputSpec(8, 1, "center_crop")).min() == 1.0
    assert preprocess([striped], InputSpec(8, 1, "squash")).min() == 0.0


def test_the_spec_travels_in_the_models_metadata():
    assert InputSpec.from_metadata({"image_size": 96, "channels": 3, "resize": "center_crop"}) == InputSpec(96, 3, "center_crop")
    assert InputSpec.from_metadata({"image_size": 8}) == InputSpec(8, 1, "squash")  # models from before
    with pytest.raises(ValueError, match="unknown resize 'stretch'"):
        preprocess([_rgb(4, 4)], InputSpec(4, 3, "stretch"))
