"""HR image folders, LR synthesis and training / calibration patches.

LR images are made with PIL's antialiased bicubic, which reproduces MATLAB ``imresize`` baselines
within 0.01 dB on Set5. HR images are mod-cropped to the scale first, as the literature does.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import BinaryIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from compress.core.distributed import Ranks, ranks, share_of_batch
from compress.core.errors import ImageTooLarge, InputError, first_line
from compress.core.jpeg_scans import count_file_scans, count_scans, scan_problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class ImageNotice(UserWarning):
    """An image was converted (grayscale or RGBA to RGB) or skipped."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (or in its ``HR`` subfolder), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: " + ("a file, not an image folder" if folder.exists() else "image folder not found"))
    if (folder / "HR").is_dir():
        folder = folder / "HR"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


#: Decoded-pixel limit, checked from the header before decoding (``SRCOMPRESS_MAX_PIXELS`` overrides it).
#: 50 MP is about 600 MB as float32 RGB, well under the memory this toolkit plans for.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_BATCH = 4096  # patches per batch: beyond any CPU or single-GPU memory at SR patch sizes
MAX_LR_PATCH = 1024  # LR patch side in pixels
MAX_BATCH_LR_PIXELS = 1 << 22  # LR pixels in a batch (4096 of 32x32, 64 of 256x256); past memory, train says so
Image.MAX_IMAGE_PIXELS = None  # our own limit, with a clean error, replaces PIL's bomb warning / error


def max_pixels() -> int:
    """The decoded-pixel limit in force."""
    raw = os.environ.get("SRCOMPRESS_MAX_PIXELS", "")
    try:
        limit = int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError as exc:
        raise InputError(f"SRCOMPRESS_MAX_PIXELS: not an integer ({raw!r})") from exc
    if limit < 1:
        raise InputError(f"SRCOMPRESS_MAX_PIXELS: must be a positive number of pixels, got {raw!r}")
    return limit


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """16-bit images to 8 bits by value / 257, rounded (0..65535 onto 0..255); float images refused."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"{path}: 32-bit integer image with values outside 0..65535; convert it to 8 or 16 bits")
        out = Image.fromarray(np.round(arr / 257.0).astype(np.uint8), mode="L")
        if img.info.get("icc_profile"):  # a gray profile still says what the values mean
            out.info["icc_profile"] = img.info["icc_profile"]
        return out
    if img.mode == "F":
        raise InputError(f"{path}: floating-point image (mode F); convert it to 8- or 16-bit first")
    if img.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img
    raise InputError(f"{path}: unsupported image mode {img.mode!r}")


def _check_scans(src: str | Path | BinaryIO, path: Path, megapixels: float) -> None:
    """Refuse a JPEG of too many scans for its size before decoding it (:mod:`compress.core.jpeg_scans`)."""
    if isinstance(src, (str, Path)):
        scans = count_file_scans(src)
    else:
        where = src.tell()
        src.seek(0)
        scans = count_scans(src.getvalue() if isinstance(src, io.BytesIO) else src.read())
        src.seek(where)
    if problem := scan_problem(scans, megapixels):
        raise InputError(f"{path}: {problem}; re-encode it")


def open_image(src: str | Path | BinaryIO, limit: int | None = None, label: str = "upload") -> Image.Image:
    """Decode an image (a file, or bytes in a file object named ``label``) after checking its header:
    pixel limit, JPEG scan limit, EXIF orientation applied, 16 bits to 8."""
    path = Path(src) if isinstance(src, (str, Path)) else Path(label)
    hint = " (set SRCOMPRESS_MAX_PIXELS to raise it)" if limit is None else ""
    limit = max_pixels() if limit is None else limit
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > limit:
                raise ImageTooLarge(f"{path}: {w}x{h} = {w * h / 1e6:.1f} MP is over the {limit / 1e6:g} MP decoding "
                                    f"limit{hint}")
            if w < 1 or h < 1:
                raise InputError(f"{path}: empty image ({w}x{h})")
            if im.format in ("JPEG", "MPO"):
                _check_scans(src, path, w * h / 1e6)
            im.load()
            img = ImageOps.exif_transpose(im) or im
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image (unknown or damaged format)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file makes Pillow's decoders raise almost anything
        # (OSError, SyntaxError, struct.error, and TypeError / OverflowError from bad TIFF tags): all are the file's
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {first_line(exc)})") from None
    return _to_8bit(img, path)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB (see :func:`open_image`); grayscale and RGBA are converted with an
    :class:`ImageNotice` (alpha composited on white)."""
    path = Path(path)
    img = open_image(path)
    if img.mode != "RGB":
        mode = img.mode
        if img.mode in ("RGBA", "LA", "P", "PA"):
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img.convert("RGBA"))
        warnings.warn(f"{path}: {mode} image converted to RGB", ImageNotice, stacklevel=2)
        img = img.convert("RGB")
    return img


def modcrop(img: Image.Image, scale: int) -> Image.Image:
    """Crop the right and bottom so both sides are multiples of ``scale``."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def bicubic_down(hr: Image.Image, scale: int) -> Image.Image:
    """Antialiased bicubic downscaling by an integer factor (``hr`` must be mod-cropped)."""
    w, h = hr.size
    return hr.resize((w // scale, h // scale), Image.BICUBIC)


def bicubic_up(lr: Image.Image, scale: int) -> Image.Image:
    w, h = lr.size
    return lr.resize((w * scale, h * scale), Image.BICUBIC)


def to_array(img: Image.Image) -> np.ndarray:
    """8-bit image to float32 HWC in [0, 1]."""
    return np.asarray(img, dtype=np.float32) / 255.0


def round_to_u8(arr: np.ndarray) -> np.ndarray:
    """float in [0, 1] (values beyond are clipped) to uint8, rounding as MATLAB's im2uint8 does."""
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


def to_image(arr: np.ndarray) -> Image.Image:
    """float HWC in [0, 1] to 8-bit RGB (:func:`round_to_u8`)."""
    return Image.fromarray(round_to_u8(arr))


@dataclasses.dataclass(frozen=True)
class ImagePair:
    """A mod-cropped HR image and its bicubic LR, as float32 HWC arrays in [0, 1], or as the 8-bit
    values they come from (uint8 HWC: training pairs, a quarter of the memory, made float per patch
    by :func:`random_patches` with the same numbers)."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def min_hr_side(scale: int) -> int:
    """Smallest HR side that leaves pixels to score after shaving ``scale`` from each border."""
    return 4 * scale


def shrunk_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is ``max_side`` (as :func:`load_pair` shrinks)."""
    f = max_side / max(size)
    return round(size[0] * f), round(size[1] * f)


def load_pair(path: str | Path, scale: int, max_side: int | None = None, u8: bool = False) -> ImagePair:
    """HR image -> (optionally shrunk) mod-cropped HR and its LR.

    Args:
        path: image file.
        scale: SR factor.
        max_side: shrink HR first (antialiased bicubic) so that its longer side is at most this,
            e.g. for large JPEG photographs whose fine detail is compression noise.
        u8: keep the 8-bit values (uint8) rather than float32 in [0, 1].
    """
    img = load_rgb(path)
    if max_side is not None and max(img.size) > max_side:
        img = img.resize(shrunk_size(img.size, max_side), Image.BICUBIC)
    hr = modcrop(img, scale)
    least = min_hr_side(scale)
    if hr.width < least or hr.height < least:
        raise InputError(f"{path}: image of {img.width}x{img.height} is too small for x{scale}: PSNR shaves {scale} px "
                         f"from each border, so both sides must be at least {least} px")
    lr = bicubic_down(hr, scale)
    if u8:
        return ImagePair(name=Path(path).stem, hr=np.asarray(hr, dtype=np.uint8), lr=np.asarray(lr, dtype=np.uint8))
    return ImagePair(name=Path(path).stem, hr=to_array(hr), lr=to_array(lr))


def load_pairs(paths: Sequence[str | Path], scale: int, max_side: int | None = None,
               u8: bool = False) -> list[ImagePair]:
    """:func:`load_pair` of each path; their notices (mode conversions) are issued only once all have
    loaded, so that a bad image's ``error:`` line is the one line a failed command prints. Other
    warnings are shown as they come, even when a later image fails."""
    held: list[warnings.WarningMessage] = []
    show = warnings.showwarning

    def hold(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ImageNotice):
            held.append(warnings.WarningMessage(message, category, filename, lineno))
        else:  # any other warning (a decompression bomb, a library's) is shown at once, as usual
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ImageNotice)
        warnings.showwarning = hold
        pairs = [load_pair(p, scale, max_side, u8) for p in paths]
    for notice in held:
        warnings.warn(notice.message, notice.category, stacklevel=2)
    return pairs


def _as_float(batch: np.ndarray) -> np.ndarray:
    """A batch in [0, 1] as float32, made exactly as :func:`to_array` makes it from 8-bit values."""
    return batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else np.ascontiguousarray(batch)


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Random patch sampling.

    Attributes:
        lr_patch: LR patch side in pixels (HR side is ``lr_patch * scale``).
        batch_size: patches per batch.
        augment: random flips and 90-degree rotations.
        seed: RNG seed; the same seed gives the same patches.
    """

    lr_patch: int = 48
    batch_size: int = 16
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr_patch < 4:
            raise ValueError(f"PatchConfig.lr_patch must be >= 4, got {self.lr_patch}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"PatchConfig.batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if self.lr_patch > MAX_LR_PATCH:
            raise ValueError(f"PatchConfig.lr_patch must be <= {MAX_LR_PATCH}, got {self.lr_patch}")
        if self.batch_size * self.lr_patch**2 > MAX_BATCH_LR_PIXELS:
            raise ValueError(f"PatchConfig: batch_size {self.batch_size} x lr_patch {self.lr_patch}^2 is over "
                             f"{MAX_BATCH_LR_PIXELS} LR pixels a batch")
        if self.seed < 0:
            raise ValueError(f"PatchConfig.seed must be >= 0, got {self.seed}")


def check_patchable(pairs: Sequence[ImagePair], lr_patch: int) -> None:
    for pair in pairs:
        h, w = pair.lr.shape[:2]
        if h < lr_patch or w < lr_patch:
            raise InputError(
                f"{pair.name}: LR image {w}x{h} is smaller than the {lr_patch}x{lr_patch} patch; "
                "use a smaller patch or remove the image"
            )


def random_patches(pairs: Sequence[ImagePair], scale: int, cfg: PatchConfig,
                   shard: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless stream of (lr, hr) batches as float32 NCHW arrays.

    ``cfg.batch_size`` is the global batch: under torchrun each rank yields its share of it, drawn
    from its own seeded stream (``[seed, rank]``), so the ranks see disjoint patches (``shard=False``:
    the whole batch, for a loop that runs in one process only, such as TensorFlow's).

    Images are drawn with probability proportional to their area, so large photographs are not
    under-sampled.
    """
    if not pairs:
        raise InputError("no training images")
    check_patchable(pairs, cfg.lr_patch)
    r = ranks() if shard else Ranks()
    batch = share_of_batch(cfg.batch_size) if shard else cfg.batch_size
    # one process keeps the recipe's stream; under torchrun each rank draws its own disjoint stream
    rng = np.random.default_rng([cfg.seed, r.rank] if r.distributed else cfg.seed)
    areas = np.array([p.lr.shape[0] * p.lr.shape[1] for p in pairs], dtype=np.float64)
    prob = areas / areas.sum()
    p, s = cfg.lr_patch, scale
    while True:
        lrs, hrs = [], []
        for idx in rng.choice(len(pairs), size=batch, p=prob):
            pair = pairs[idx]
            h, w = pair.lr.shape[:2]
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            lr = pair.lr[y : y + p, x : x + p]
            hr = pair.hr[y * s : (y + p) * s, x * s : (x + p) * s]
            if cfg.augment:
                k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
                lr, hr = np.rot90(lr, k), np.rot90(hr, k)
                if flip:
                    lr, hr = lr[:, ::-1], hr[:, ::-1]
            lrs.append(lr.transpose(2, 0, 1))
            hrs.append(hr.transpose(2, 0, 1))
        yield _as_float(np.stack(lrs)), _as_float(np.stack(hrs))
