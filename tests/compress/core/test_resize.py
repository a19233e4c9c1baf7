"""SRCNN's input enlargement is PIL's / MATLAB's bicubic (a = -0.5), border rule included."""

import numpy as np
import pytest
import torch
from PIL import Image

from compress.core.resize import bicubic_taps, bicubic_up
from tests.conftest import tiny_srcnn


def test_taps_are_keys_cubic_with_a_half_and_sum_to_one():
    for scale in (2, 3, 4):
        np.testing.assert_allclose(bicubic_taps(scale).sum(axis=1), 1.0, atol=1e-12)
    # x2 phase 0 sits 0.25 px before the input pixel centre: Keys a=-0.5 at distances 1.75, 0.75, 0.25, 1.25
    np.testing.assert_allclose(bicubic_taps(2)[0], [-0.0234375, 0.2265625, 0.8671875, -0.0703125, 0.0], atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_pil_bicubic_within_1e_5_on_a_test_image(scale):
    rng = np.random.default_rng(scale)
    img = rng.random((23, 31, 3), dtype=np.float32)
    ref = np.stack([np.asarray(Image.fromarray(img[..., c], mode="F").resize((31 * scale, 23 * scale), Image.BICUBIC))
                    for c in range(3)], axis=-1)
    got = bicubic_up(torch.from_numpy(img.transpose(2, 0, 1))[None], scale)[0].numpy().transpose(1, 2, 0)
    assert np.abs(got - ref).max() < 1e-5


def test_srcnn_uses_it_in_pytorch_and_in_onnx(tmp_path):
    from export.onnx_export import export_onnx
    from export.runtimes import ort_upscaler

    model = tiny_srcnn(3, channels=3)
    x = torch.rand(1, 3, 17, 19)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), model._net(bicubic_up(x, 3)).numpy(), atol=1e-6)
    y = ort_upscaler(export_onnx(tiny_srcnn(3, channels=1), tmp_path / "s.onnx"))(x.numpy())
    with torch.no_grad():
        assert np.abs(y - tiny_srcnn(3, channels=1)(x).numpy()).max() < 1e-4
