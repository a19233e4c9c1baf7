import numpy as np
import pytest

from compress.core.data import (
    ImageNotice, PatchConfig, list_images, load_pair, load_pairs, load_rgb, modcrop, random_patches,
)
from compress.core.default_data import IMAGES, split_paths
from compress.core.errors import InputError
from tests.conftest import write_image


def test_modcrop_and_lr_size(tmp_path):
    pair = load_pair(write_image(tmp_path / "a.png", (101, 77)), 3)
    assert pair.hr.shape == (75, 99, 3) and pair.lr.shape == (25, 33, 3)
    assert pair.hr.dtype == np.float32 and 0 <= pair.hr.min() and pair.hr.max() <= 1


def test_grayscale_and_rgba_converted_with_notice(tmp_path):
    for mode in ("L", "RGBA"):
        path = write_image(tmp_path / f"{mode}.png", mode=mode)
        with pytest.warns(ImageNotice, match=f"{mode} image converted"):
            assert load_rgb(path).mode == "RGB"


def test_non_image_and_empty_folder(tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("hello")
    with pytest.raises(InputError, match="fake.png: not a readable image"):
        load_pairs(list_images(tmp_path), 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        list_images(empty)
    with pytest.raises(InputError, match="not found"):
        list_images(tmp_path / "nope")


def test_truncated_image_is_named(tmp_path):
    path = write_image(tmp_path / "t.png", (64, 64))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InputError, match="t.png"):
        load_rgb(path)


def test_image_smaller_than_patch(tmp_path):
    pairs = load_pairs([write_image(tmp_path / "small.png", (40, 40))], 2)
    with pytest.raises(InputError, match=r"small: LR image 20x20 is smaller than the 24x24 patch"):
        next(random_patches(pairs, 2, PatchConfig(lr_patch=24, batch_size=2)))


def test_patches_are_aligned_and_deterministic(image_dir):
    pairs = load_pairs(list_images(image_dir), 2)
    cfg = PatchConfig(lr_patch=8, batch_size=4, seed=3)
    lr1, hr1 = next(random_patches(pairs, 2, cfg))
    lr2, hr2 = next(random_patches(pairs, 2, cfg))
    assert lr1.shape == (4, 3, 8, 8) and hr1.shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(lr1, lr2)
    np.testing.assert_array_equal(hr1, hr2)
    lr3, _ = next(random_patches(pairs, 2, PatchConfig(lr_patch=8, batch_size=4, seed=4)))
    assert not np.array_equal(lr1, lr3)


def test_patch_config_validation():
    with pytest.raises(ValueError, match="lr_patch"):
        PatchConfig(lr_patch=2)


def test_default_set_is_installed_and_set14_images_stay_in_evaluation():
    for split in ("train", "calibration", "evaluation"):
        assert all(p.is_file() for p in split_paths(split))
    evaluation = {img.relpath.rsplit("/", 1)[-1] for img in IMAGES if img.split == "evaluation"}
    assert {"barbara.png", "monarch.png"} <= evaluation
    train = {img.relpath.rsplit("/", 1)[-1] for img in IMAGES if img.split == "train"}
    assert not train & {"barbara.png", "monarch.png", "kodim23.png"}
