import io

import numpy as np
from PIL import Image

from compress.pipeline.visual import AMPLIFY, comparison_png, label, textured_window


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


def test_labels_name_the_source_of_pruned_artifacts():
    assert label("20-quantize/prune-channel/model_int8_nncf.xml", "openvino") == "prune-channel/int8_nncf (openvino)"
    assert label("20-quantize/model/model_int8_percentile.onnx", "ort") == "int8_percentile (ort)"
    assert label("10-prune/channel/model.onnx", "ort") == "channel (ort)"
    assert label("30-export/model_fp32.onnx", "openvino-bf16") == "fp32 (openvino-bf16)"
