import io

import numpy as np
from PIL import Image

from compress.pipeline.visual import AMPLIFY, comparison_png, textured_window


def test_textured_window_finds_the_texture():
    hr = np.full((400, 400, 3), 0.5, dtype=np.float32)
    hr[240:340, 40:140] = np.random.default_rng(0).random((100, 100, 3))  # the only texture, HR (240, 40)
    y, x = textured_window(hr, 2, 24, 8)
    assert abs(y * 2 - 240) <= 48 and abs(x * 2 - 40) <= 48


def test_comparison_png_shows_every_image_and_its_difference():
    ref = np.zeros((32, 32, 3), dtype=np.float32)
    images = {"HR": ref, "FP32": ref, "int8": ref + 1 / AMPLIFY}
    png = comparison_png(images, "FP32", "title")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > img.height  # one column per image, crops over differences
