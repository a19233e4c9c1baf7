"""Images as a deployer has them: decode from a file or bytes, upscale keeping alpha and grayscale, encode.

Rules (stated once, used by ``upscale`` and ``serve``):
- the decoded-pixel limit and EXIF orientation of :func:`compress.core.data.open_image` apply;
  16-bit grayscale images become 8-bit by value / 257; floating-point images are refused;
- palette images become RGBA when they have transparency, else RGB;
- RGBA / LA: the colour goes through the model, the alpha is enlarged separately with PIL's bicubic
  and put back; grayscale (L / LA) is run as RGB and returned as grayscale (BT.601 luma);
- 16-bit RGB files are reduced by PIL to their high byte (at most 1 level from value / 257);
- animated images: the first frame;
- an embedded ICC colour profile (Display P3, Adobe RGB, a gray profile) is carried to the output:
  the model enlarges the encoded values, so the same profile still says what colours they mean; a
  CMYK image is converted to RGB without its profile, which the output then does not carry;
- the output is 8-bit PNG, JPEG (alpha dropped onto white) or WebP, within each format's size limit.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from compress.core.data import max_pixels, open_image, to_array
from compress.core.errors import BadModelOutput, InputError
from compress.core.infer import NonFiniteOutput, TileConfig, Upscaler, auto_tiles, upscale_u8

FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MAX_SIDE = {"PNG": 2**31 - 1, "JPEG": 65_500, "WEBP": 16_383}
OTHER_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")  # converted to RGB; their ICC profiles do not fit it
SNIFFED = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"GIF87a": "gif", b"GIF89a": "gif",
           b"BM": "bmp", b"II*\x00": "tiff", b"MM\x00*": "tiff"}


@dataclasses.dataclass(frozen=True)
class Decoded:
    """An image split for the model.

    Attributes:
        rgb: HWC float32 in [0, 1].
        alpha: the alpha channel as an 8-bit ``L`` image, or None.
        gray: whether the input was grayscale (the output is then grayscale too).
        mode: the decoded mode, for messages.
        icc_profile: the embedded ICC profile's bytes, for the output, or None.
    """

    rgb: np.ndarray
    alpha: Image.Image | None
    gray: bool
    mode: str
    icc_profile: bytes | None = None


def sniff(data: bytes) -> str | None:
    """The image format from the first bytes (not from a file name), or None."""
    for magic, name in SNIFFED.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def split(img: Image.Image, label: str) -> Decoded:
    """Colour, alpha and grayness of an 8-bit image (see the module's rules)."""
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in (*OTHER_COLOUR_SPACES, "RGBX"):
        img = img.convert("RGB")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise InputError(f"{label}: unsupported image mode {mode!r}")
    alpha = img.getchannel("A") if img.mode in ("LA", "RGBA") else None
    gray = img.mode in ("L", "LA")
    icc = img.info.get("icc_profile") if mode not in OTHER_COLOUR_SPACES else None
    return Decoded(to_array(img.convert("RGB")), alpha, gray, mode, icc or None)


class UnsupportedFormat(InputError):
    """Content that is no image format this toolkit reads (judged by its bytes, not its name)."""


def decode_bytes(data: bytes, label: str = "upload", limit: int | None = None) -> Decoded:
    """Decode uploaded bytes, their format sniffed from the content."""
    if sniff(data) is None:
        raise UnsupportedFormat(f"{label}: not a supported image (PNG, JPEG, WebP, GIF, BMP, TIFF by content)")
    return split(open_image(io.BytesIO(data), limit=limit, label=label), label)


def decode_file(path: str | Path) -> Decoded:
    return split(open_image(path), str(path))


def upscale_decoded(fn: Upscaler, img: Decoded, scale: int, tiles: TileConfig = TileConfig()) -> Image.Image:
    """Run the model on the colour, enlarge the alpha with bicubic, restore grayscale."""
    try:
        out = Image.fromarray(upscale_u8(fn, img.rgb, scale, auto_tiles(img.rgb.shape, tiles, scale)))
    except NonFiniteOutput as e:
        raise BadModelOutput(f"{e}; no image is written") from None
    if img.gray:
        out = out.convert("L")
    if img.alpha is not None:
        a = img.alpha.resize((out.width, out.height), Image.BICUBIC)
        out = out.convert("LA" if img.gray else "RGBA")
        out.putalpha(a)
    if img.icc_profile:
        out.info["icc_profile"] = img.icc_profile
    return out


OUTPUT_PIXELS_PER_INPUT_PIXEL = 4


def check_encodable(width: int, height: int, fmt: str) -> None:
    """Refuse an output ``fmt`` cannot hold (before the inference that would make it).

    The output is held in 8 bits and encoded in memory, so its pixels are capped too: at
    :data:`OUTPUT_PIXELS_PER_INPUT_PIXEL` times the input limit (the x2 output of the largest input
    ``max_pixels`` admits; 200 MP, 600 MB of RGB, by default).

    Raises:
        InputError: an unknown format, a side over the format's limit (:data:`MAX_SIDE`), or more
            pixels than the output limit.
    """
    if fmt not in FORMATS:
        raise InputError(f"output format must be one of {sorted(set(FORMATS))}, got {fmt!r}")
    limit = OUTPUT_PIXELS_PER_INPUT_PIXEL * max_pixels()
    if width * height > limit:
        raise InputError(f"a {width}x{height} output ({width * height / 1e6:.3g} MP) is over the output limit of "
                         f"{limit / 1e6:.3g} MP; upscale a smaller image or a crop (SRCOMPRESS_MAX_PIXELS raises "
                         f"the input limit, and this one with it)")
    kind = FORMATS[fmt]
    side = MAX_SIDE[kind]
    if max(width, height) > side:
        raise InputError(f"a {width}x{height} output is over {kind}'s limit of {side} pixels a side; "
                         "choose the png format")


def profile_fits(icc: bytes, mode: str) -> bool:
    """Whether an ICC profile describes images of ``mode``: its header's colour space (bytes 16-19) is
    ``GRAY`` for L / LA and ``RGB`` for RGB / RGBA (a gray image's profile does not fit the RGB JPEG
    its alpha is composited into)."""
    space = icc[16:20]
    return space == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def encode(img: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """8-bit PNG / JPEG / WebP bytes (JPEG has no alpha: it is composited on white), with the image's
    ICC profile (``img.info["icc_profile"]``) embedded when it has one."""
    check_encodable(img.width, img.height, fmt)
    kind = FORMATS[fmt]
    icc = img.info.get("icc_profile")
    if kind == "JPEG" and img.mode in ("RGBA", "LA"):
        base = Image.new("RGB", img.size, (255, 255, 255))
        base.paste(img.convert("RGBA"), mask=img.getchannel("A"))
        img = base
    written = "RGB" if kind == "WEBP" else img.mode  # PIL's WebP writer makes L / LA into RGB / RGBA
    icc = icc if icc and profile_fits(icc, written) else None
    buf = io.BytesIO()
    options = {"quality": quality} if kind in ("JPEG", "WEBP") else {}
    img.save(buf, format=kind, **options, **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()
