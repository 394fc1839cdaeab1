import io

import numpy as np
import pytest
from PIL import Image

from kernel.errors import BadInputError
from loop.starter import DIGITS_SCALE, digits_images
from pipelines.images import decode_image, preprocess


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
