"""Tiled inference: equal tile shapes, and the same result as whole-image inference."""

import numpy as np
import pytest

from compress.core.infer import (AUTO_TILE, NonFiniteOutput, TileConfig, _windows, auto_tiles, to_u8, torch_upscaler,
                                 upscale, upscale_u8)
from compress.core.metrics import psnr_y_db
from tests.conftest import tiny_edsr


@pytest.mark.parametrize("n, tile, overlap", [(100, 32, 8), (33, 32, 8), (20, 32, 8), (257, 64, 16)])
def test_windows_cover_the_axis_with_one_window_length(n, tile, overlap):
    wins = _windows(n, tile, overlap)
    assert wins[0][0] == 0 and wins[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(wins, wins[1:]))
    assert len({wb - wa for _, _, wa, wb in wins}) == 1
    assert all(wa <= s and e <= wb for s, e, wa, wb in wins)


def test_every_tile_has_one_shape_and_tiled_equals_whole_within_001_db():
    model = tiny_edsr(2)
    shapes = []
    fn = torch_upscaler(model)

    def spy(x):  # noqa: ANN001, ANN202
        shapes.append(x.shape)
        return fn(x)

    lr = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    whole = upscale(fn, lr, 2)
    tiled = upscale(spy, lr, 2, TileConfig(tile=32, overlap=12))
    assert len(shapes) == 9 and len(set(shapes)) == 1
    assert psnr_y_db(tiled, whole, 2) > psnr_y_db(whole + 0.0, whole + 1e-3, 2)  # far closer than 1e-3 noise
    # within 0.01 dB of whole-image inference against a reference
    ref = np.clip(whole + np.random.default_rng(1).normal(0, 0.02, whole.shape).astype(np.float32), 0, 1)
    assert abs(psnr_y_db(tiled, ref, 2) - psnr_y_db(whole, ref, 2)) < 0.01


def test_large_inputs_are_tiled_automatically():
    assert auto_tiles((1200, 1000, 3), TileConfig(), 2) == AUTO_TILE
    assert auto_tiles((540, 960, 3), TileConfig(), 2) == TileConfig()  # a 1080p output at x2: whole image
    assert auto_tiles((270, 480, 3), TileConfig(), 4) == TileConfig()  # and at x4
    assert auto_tiles((1000, 1000, 3), TileConfig(), 2) == TileConfig()  # 4 MP out: the last whole image
    assert auto_tiles((1000, 1000, 3), TileConfig(), 4) == AUTO_TILE  # the same LR at x4 is 16 MP out
    assert auto_tiles((600, 600, 3), TileConfig(tile=64), 2) == TileConfig(tile=64)


def test_to_u8_rounds_as_im2uint8_clips_and_refuses_nan():
    assert to_u8(np.array([-0.1, 0.0, 0.5 / 255, 1.5 / 255, 0.999, 1.2])).tolist() == [0, 0, 0, 2, 255, 255]
    with pytest.raises(NonFiniteOutput):
        to_u8(np.array([0.5, np.nan]))


@pytest.mark.parametrize("tiles", [TileConfig(), TileConfig(tile=32, overlap=12)], ids=["whole", "tiled"])
def test_upscale_u8_is_the_8_bit_rounding_of_upscale(tiles):
    fn = torch_upscaler(tiny_edsr(2))
    lr = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    u8 = upscale_u8(fn, lr, 2, tiles)
    assert u8.dtype == np.uint8 and u8.shape == (140, 180, 3)
    np.testing.assert_array_equal(u8, to_u8(upscale(fn, lr, 2, tiles)))


def test_upscale_u8_refuses_a_nan_tile():
    def nan_in_last_tile(x):  # noqa: ANN001, ANN202
        out = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
        return out if x[0, 0, -1, -1] < 2 else out * np.nan

    lr = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    lr[-1, -1, 0] = 5.0
    with pytest.raises(NonFiniteOutput):
        upscale_u8(nan_in_last_tile, lr, 2, TileConfig(tile=32, overlap=12))
