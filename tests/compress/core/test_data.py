from pathlib import Path

import numpy as np
import pytest

from compress.core.data import (
    ImageNotice, ImagePair, PatchConfig, list_images, load_pair, load_pairs, load_rgb, random_patches,
)
from compress.core.default_data import (IMAGES, WALLPAPER_PACKAGES, WALLPAPERS, named_set, split_paths,
                                        validation_paths)
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


def test_notices_of_a_set_come_only_once_every_image_has_loaded(tmp_path):
    """A failed ``eval`` prints its one ``error:`` line, not the notices of the images before it."""
    import warnings

    gray = write_image(tmp_path / "a_gray.png", mode="L")
    (tmp_path / "b_bad.png").write_text("hello")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="b_bad.png: not a readable image"):
            load_pairs(list_images(tmp_path), 2)
    assert [str(w.message) for w in seen] == []
    with pytest.warns(ImageNotice, match="a_gray.png: L image converted") as notices:
        assert len(load_pairs([gray, write_image(tmp_path / "c.png")], 2)) == 2
    assert len(notices) == 1


def test_other_warnings_of_a_failed_set_are_still_shown(tmp_path, monkeypatch):
    """Only the images' own notices wait for the whole set; a library's warning is not lost."""
    import warnings

    import compress.core.data as data

    real = data.load_rgb

    def load_with_library_warning(path):
        warnings.warn(f"{path}: a library's warning", RuntimeWarning)
        return real(path)

    monkeypatch.setattr(data, "load_rgb", load_with_library_warning)
    gray = write_image(tmp_path / "a_gray.png", mode="L")
    (tmp_path / "b_bad.png").write_text("hello")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="b_bad.png: not a readable image"):
            load_pairs([gray, tmp_path / "b_bad.png"], 2)
    assert [(w.category, Path(str(w.message).split(":")[0]).name) for w in seen] == [
        (RuntimeWarning, "a_gray.png"), (RuntimeWarning, "b_bad.png")]


def test_non_image_and_empty_folder(tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("hello")
    with pytest.raises(InputError, match="fake.png: not a readable image"):
        load_pairs(list_images(tmp_path), 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        list_images(empty)
    with pytest.raises(InputError, match="nope: image folder not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(InputError, match=r"fake\.png: a file, not an image folder"):
        list_images(bad)


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


@pytest.mark.parametrize("augment", [False, True])
def test_each_hr_patch_is_its_lr_patch_enlarged(augment):
    # an HR image made of scale x scale blocks of its LR image: any misaligned or differently rotated /
    # flipped crop breaks hr == kron(lr, ones)
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (30, 23, 3), dtype=np.uint8)
    pair = ImagePair("blocks", np.kron(lr, np.ones((3, 3, 1), dtype=np.uint8)), lr)
    lrs, hrs = next(random_patches([pair], 3, PatchConfig(lr_patch=8, batch_size=64, seed=1, augment=augment)))
    np.testing.assert_array_equal(hrs, np.kron(lrs, np.ones((1, 1, 3, 3), dtype=np.float32)))
    assert len({p.tobytes() for p in lrs}) > 32  # the crops differ


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


def test_checkpoints_are_chosen_on_images_outside_set5_set14_and_training():
    names = {p.name for p in validation_paths()}
    assert names == {"astronaut.png", "grace_hopper.jpg", "chelsea.png", "kodim23.png"}
    assert {img.benchmark for img in IMAGES if img.relpath.endswith(("barbara.png", "monarch.png"))} == {"Set14"}
    assert not names & {p.name for p in split_paths("train")}


def test_named_sets_are_the_evaluation_split_and_the_validation_images():
    assert [p.name for p in named_set("embedded")] == ["chelsea.png", "barbara.png", "monarch.png", "kodim23.png"]
    assert named_set("validation") == validation_paths()
    assert named_set("./embedded") is None and named_set("Set5") is None  # anything else is a folder


def test_make_installs_every_wallpaper_package_and_names_are_unique():
    from tests.conftest import REPO

    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if ln.startswith("WALLPAPER_PKGS :="))
    assert sorted(line.split(":=")[1].split()) == sorted(WALLPAPER_PACKAGES)
    assert len({w.file for w in WALLPAPERS}) == len(WALLPAPERS)
    assert all(w.file.startswith("/usr/share/") and w.licence for w in WALLPAPERS)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    with pytest.warns(ImageNotice):
        rgb = np.asarray(load_rgb(path))
    expected = np.round(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb == 255).mean() < 0.01  # the old conversion put 99.6% of such pixels at 255


def test_float_tiff_is_refused(tmp_path):
    from PIL import Image

    path = tmp_path / "f.tiff"
    Image.fromarray(np.random.default_rng(0).random((32, 32), dtype=np.float32)).save(path)
    with pytest.raises(InputError, match="f.tiff: floating-point image"):
        load_rgb(path)


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", (300, 200))
    monkeypatch.setenv("SRCOMPRESS_MAX_PIXELS", "50000")
    with pytest.raises(InputError, match=r"big.png: 300x200 = 0.1 MP is over the 0.05 MP decoding limit"):
        load_rgb(path)
    monkeypatch.setenv("SRCOMPRESS_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="SRCOMPRESS_MAX_PIXELS: not an integer"):
        load_rgb(path)
    for bad in ("0", "-1"):
        monkeypatch.setenv("SRCOMPRESS_MAX_PIXELS", bad)
        with pytest.raises(InputError, match=f"SRCOMPRESS_MAX_PIXELS: must be a positive number of pixels, got '{bad}'"):
            load_rgb(path)


def test_header_claiming_a_huge_image_is_refused_without_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900 MP RGB, no image data at all
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="bomb.png: 30000x30000 = 900.0 MP is over"):
        load_rgb(path)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_rgb(path).size == (20, 40)


def test_images_too_small_for_the_shave_border_are_refused(tmp_path):
    with pytest.raises(InputError, match="too small for x4: PSNR shaves 4 px"):
        load_pair(write_image(tmp_path / "tiny.png", (12, 40)), 4)


def test_training_pairs_are_kept_in_8_bits_and_give_the_same_patches(tmp_path):
    from compress.core.default_data import training_pairs

    write_image(tmp_path / "a.png", (1300, 40))  # a user's image: not shrunk, though over 1200 px
    write_image(tmp_path / "b.png", (60, 50), seed=1)
    pairs = training_pairs(str(tmp_path), 2)
    assert [p.hr.dtype for p in pairs] == [np.uint8] * 2 and pairs[0].hr.shape == (40, 1300, 3)
    assert training_pairs(str(tmp_path), 2, max_side=650)[0].hr.shape == (20, 650, 3)
    floats = load_pairs(sorted(tmp_path.iterdir()), 2)
    cfg = PatchConfig(lr_patch=8, batch_size=4, seed=3)
    for (lr8, hr8), (lr, hr), _ in zip(random_patches(pairs, 2, cfg), random_patches(floats, 2, cfg), range(3)):
        assert lr8.dtype == hr8.dtype == np.float32
        assert np.array_equal(lr8, lr) and np.array_equal(hr8, hr)  # the very numbers of the float32 pairs


@pytest.mark.parametrize("name", ["strip_ascii.tiff", "strip_long8.tiff"])
def test_a_tiff_with_a_mistyped_tag_is_an_unreadable_image_not_a_crash(name):
    """Bad TIFF tag types make Pillow's decoder raise TypeError / OverflowError (the service answered 500)."""
    path = Path(__file__).with_name("data") / name
    with pytest.raises(InputError, match=rf"{name}: not a readable image \((TypeError|OverflowError|ValueError): "):
        load_rgb(path)


def test_an_unidentified_upload_is_named_without_python_internals(tmp_path):
    import io

    from compress.core.data import open_image

    with pytest.raises(InputError, match=r"^upload: not a readable image \(unknown or damaged format\)$"):
        open_image(io.BytesIO(b"\x89PNG\r\n\x1a\n"))


def test_default_training_pairs_shrink_the_wallpapers_to_the_recipes_side(tmp_path, monkeypatch):
    from compress.core import default_data

    wall = write_image(tmp_path / "wall.jpg", (2000, 100))
    monkeypatch.setattr(default_data, "wallpaper_paths", lambda: [wall])
    monkeypatch.setattr(default_data, "split_paths", lambda split: [])
    assert default_data.training_pairs("default", 2)[0].hr.shape == (60, 1200, 3)  # WALLPAPER_MAX_SIDE
    assert default_data.training_pairs("default", 2, wallpaper_max_side=1800)[0].hr.shape == (90, 1800, 3)
    # a smaller max_side still wins for every image
    assert default_data.training_pairs("default", 2, 500, wallpaper_max_side=1800)[0].hr.shape == (24, 500, 3)
