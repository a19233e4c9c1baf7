import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from compress.core.color import rgb_to_y
from compress.core.metrics import mean_error_y, psnr_db, psnr_rgb_db, psnr_y_db, ssim, ssim_y
from tests.conftest import EVALDATA


def test_bt601_y_of_white_black():
    img = np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(rgb_to_y(img) * 255, [[235.0, 16.0]], atol=1e-9)


def test_psnr_y_golden_one_level_offset():
    hr = np.full((20, 20, 3), 100 / 255)
    sr = hr + 1 / 255
    # one 8-bit level on R, G and B moves Y by 219/255 levels: 20*log10(255*255/219)
    assert psnr_y_db(sr, hr, scale=2) == pytest.approx(49.4527, abs=1e-4)
    assert psnr_rgb_db(sr, hr, scale=2) == pytest.approx(48.1308, abs=1e-4)


def test_both_images_are_rounded_to_8_bits_before_the_psnr():
    hr = np.full((20, 20, 3), 100 / 255)
    assert psnr_y_db(hr + 0.4 / 255, hr, scale=2) == math.inf  # under half a level: the same 8-bit image
    assert psnr_y_db(hr + 0.6 / 255, hr, scale=2) == pytest.approx(49.4527, abs=1e-4)  # one whole level


def test_mean_error_y_golden_and_signed():
    hr = np.full((20, 20, 3), 100 / 255)
    # one level darker on R, G and B is 219/255 of a level darker in Y; the shaved border does not count
    dark = hr - 1 / 255
    dark[:2] = 1.0
    assert mean_error_y(dark, hr, scale=2) == pytest.approx(-219 / 255, abs=1e-9)
    assert mean_error_y(hr + 1 / 255, hr, scale=2) == pytest.approx(219 / 255, abs=1e-9)


def test_border_is_shaved_by_scale():
    hr = np.full((16, 16, 3), 0.5)
    sr = hr.copy()
    sr[:3, :, :] = 0.0
    assert psnr_y_db(sr, hr, scale=3) == math.inf
    assert psnr_y_db(sr, hr, scale=2) < 20


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_db(np.zeros((2, 2)), np.zeros((3, 2)))


def test_ssim_matches_scikit_image_reference():
    rng = np.random.default_rng(0)
    a = rng.random((40, 50)) * 255
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    ref = structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_y_decreases_with_noise():
    rng = np.random.default_rng(1)
    hr = rng.random((32, 32, 3))
    assert ssim_y(hr, hr, 2) == pytest.approx(1.0)
    noise = rng.standard_normal(hr.shape)
    light, heavy = (ssim_y(np.clip(hr + s * noise, 0, 1), hr, 2) for s in (0.05, 0.3))
    assert 1.0 > light > heavy


@pytest.mark.skipif(not (EVALDATA / "Set5").is_dir(), reason="../shared/evaldata/Set5 not present")
@pytest.mark.parametrize(("scale", "published"), [(2, 33.66), (3, 30.39), (4, 28.42)])
def test_bicubic_reproduces_published_set5(scale, published):
    from compress.core.data import list_images, load_pairs
    from compress.core.evaluate import bicubic_upscaler, evaluate

    pairs = load_pairs(list_images(EVALDATA / "Set5"), scale)
    assert evaluate(bicubic_upscaler(scale), pairs, scale).psnr_y_db == pytest.approx(published, abs=0.02)


@pytest.mark.skipif(not (EVALDATA / "Set14").is_dir(), reason="../shared/evaldata/Set14 not present")
@pytest.mark.parametrize(("scale", "published"), [(2, 30.24), (3, 27.55), (4, 26.00)])
def test_bicubic_close_to_published_set14(scale, published):
    import warnings

    from compress.core.data import list_images, load_pairs
    from compress.core.evaluate import bicubic_upscaler, evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bridge.png is grayscale
        pairs = load_pairs(list_images(EVALDATA / "Set14"), scale)
    assert evaluate(bicubic_upscaler(scale), pairs, scale).psnr_y_db == pytest.approx(published, abs=0.1)
